"""The streaming export (COPY or chunks -> spool -> Arrow batches) against the
straightforward one (read everything with pandas, DataFrame.to_csv)."""

import csv
import gzip
import hashlib
import io
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd

from voicesurvey_exports.app_db.contacts import copy_terminal_contacts, terminal_contacts_query
from voicesurvey_exports.export_file.csv_format import CSV_COLUMNS, render_rows, render_spool

from .test_csv_properties import NULL_MARKER_WORDS, read_export

AWKWARD_TEXT = [
    'She said "yes", then "no"',
    "line one\nline two\r\nline three\rend",
    "Sì, è così — ÄÖÜ ß 中文 👍🏽🎉",
    '=HYPERLINK("http://evil")',
    "+33 6 12 34 56 78",
    "-1",
    "@SUM(A1)",
    "\tindented",
    "\rcarriage",
    "\nnewline first",
    "\u200fright-to-left mark",
    # Words CSV readers take for NULL by default: answers like any other here.
    "N/A",
    "null",
    "NaN",
    "#N/A",
    "None",
    "<NA>",
    "-nan",
    # Formulas in disguise: behind spaces, NBSP, zero-width or bidi characters, full-width.
    " =1+1",
    "\u00a0+1",
    "\u200b@SUM(A1)",
    "\u202e-2",
    "＝HYPERLINK(1)",
    "﹣3",
    "\u2212 4",
    "",
    "   spaces   ",
    "x" * 10_000,
    None,
]


def parse(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def test_streaming_file_parses_to_exactly_the_reference_rows(engine, app_data, tmp_path):
    campaign = app_data.campaign()
    # SQLite stores no offsets (the app writes UTC there); PostgreSQL converts them.
    offset = timezone(timedelta(hours=-7)) if engine.dialect.name == "postgresql" else UTC
    for i, text in enumerate(AWKWARD_TEXT):
        state = ("completed", "refused", "not_reached", "excluded")[i % 4]
        contact = app_data.contact(
            campaign,
            state,
            external_contact_id=text,
            attempts_count=i,
            last_attempt_at=None
            if i % 5 == 0
            else datetime(2026, 3, 29, 1, 30, 7, 999_999, offset),
        )
        if state == "completed" or i % 3 == 0:
            app_data.response(contact, campaign, text, AWKWARD_TEXT[-1 - i], None)
    app_data.contact(campaign, "pending", external_contact_id="not exported")

    with engine.connect() as conn:
        reference = render_rows(pd.read_sql(terminal_contacts_query(campaign), conn))
    spool, streamed = tmp_path / "spool.csv", tmp_path / "export.csv"
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    stats = render_spool(spool, streamed)

    expected = parse(reference)
    assert len(expected) == len(AWKWARD_TEXT) + 1
    assert parse(streamed.read_bytes()) == expected
    assert stats.row_count == len(AWKWARD_TEXT)
    assert streamed.read_bytes().startswith(reference.split(b"\r\n", 1)[0] + b"\r\n")
    # Spot-check the reference itself, so that both cannot be wrong the same way.
    by_id = {row[2]: row for row in expected[1:]}
    expected_time = f"2026-03-29T{'08' if offset != UTC else '01'}:30:07.999999Z"
    assert by_id['\'=HYPERLINK("http://evil")'][5] == expected_time
    assert "'\nnewline first" in by_id and "line one\nline two\r\nline three\rend" in by_id
    assert {"N/A", "null", "#N/A", "None", "'-nan", "' =1+1", "'\u200b@SUM(A1)"} <= set(by_id)


def test_null_words_and_empty_text_read_back_apart_from_null(engine, app_data, tmp_path):
    """Only SQL NULL is an (unquoted) empty field; '' and "N/A"-like words are text."""
    campaign = app_data.campaign()
    stored = {}
    for word in [*NULL_MARKER_WORDS, ""]:
        contact = app_data.contact(campaign, "completed", external_contact_id=word)
        app_data.response(contact, campaign, word, None, word.lower())
        stored[str(contact)] = [word, word, None, word.lower()]
    contact = app_data.contact(campaign, "refused", external_contact_id=None)  # no response
    stored[str(contact)] = [None, None, None, None]
    spool, streamed = tmp_path / "spool.csv", tmp_path / "export.csv"
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    render_spool(spool, streamed)

    exported = {
        row["contact_id"]: [row[column] for column in (CSV_COLUMNS[2], *CSV_COLUMNS[7:10])]
        for row in read_export(streamed.read_bytes())
    }
    guarded = {  # "-NaN" and the like start with "-": they get the formula guard
        contact: [f"'{text}" if text and text.startswith("-") else text for text in texts]
        for contact, texts in stored.items()
    }
    assert exported == guarded


def test_empty_campaign_streams_a_header_only_file(engine, app_data, tmp_path):
    campaign = app_data.campaign()
    spool, streamed = tmp_path / "spool.csv", tmp_path / "export.csv"
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    stats = render_spool(spool, streamed)
    assert parse(streamed.read_bytes()) == parse(
        render_rows(pd.DataFrame(columns=list(CSV_COLUMNS)))
    )
    assert stats.row_count == 0


def large_campaign(postgres_url: str):
    """(engine, campaign) with 60,000 contacts, 40,000 of them terminal: several spool
    blocks."""
    from sqlalchemy import text

    from voicesurvey_exports.app_db.engine import get_engine

    engine = get_engine(postgres_url)
    campaign = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO campaigns (id, name) VALUES (:c, 'big')"), {"c": campaign})
        conn.execute(
            text("""
            INSERT INTO contacts (campaign_id, external_contact_id, phone_number, state,
                                  attempts_count, last_attempt_at)
            SELECT :c, CASE WHEN g % 11 = 0 THEN '=cmd' || g ELSE 'crm,' || g END, '+39',
                   (ARRAY['completed','refused','pending']::contact_state[])[1 + g % 3],
                   g % 4, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute'
            FROM generate_series(1, 60000) g"""),
            {"c": campaign},
        )
        conn.execute(
            text("""
            INSERT INTO survey_responses (contact_id, campaign_id, q1_answer, completed_at)
            SELECT id, campaign_id, 'a "quoted"' || chr(10) || 'answer', now()
            FROM contacts WHERE campaign_id = :c AND state = 'completed'"""),
            {"c": campaign},
        )
    return engine, campaign


def test_large_campaign_streams_in_many_batches_with_the_same_rows(postgres_url, tmp_path):
    engine, campaign = large_campaign(postgres_url)
    with engine.connect() as conn:
        reference = render_rows(pd.read_sql(terminal_contacts_query(campaign), conn))
    spool, streamed = tmp_path / "spool.csv", tmp_path / "export.csv"
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    assert spool.stat().st_size > 4 * (1 << 20)  # several reader blocks
    stats = render_spool(spool, streamed)
    assert stats.row_count == 40_000
    assert stats.outcome_counts == {"completed": 20_000, "refused": 20_000}
    assert parse(streamed.read_bytes()) == parse(reference)


def test_gzip_compresses_as_it_writes_and_never_holds_the_file(postgres_url, tmp_path):
    engine, campaign = large_campaign(postgres_url)
    spool, plain, compressed = (tmp_path / name for name in ("spool", "plain", "compressed"))
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    render_spool(spool, plain, bom=True)

    tracemalloc.start()
    try:
        stats = render_spool(spool, compressed, bom=True, gzip=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    stored = compressed.read_bytes()
    assert gzip.decompress(stored) == plain.read_bytes()
    assert (stats.row_count, stats.byte_count) == (40_000, len(stored))
    assert stats.sha256 == hashlib.sha256(stored).hexdigest()
    # Python-side allocations, zlib's state and buffers included (about 0.8 MB), stay
    # below the size of the gzip itself (1.3 MB; the CSV is 6 MB): neither the CSV nor
    # its gzip is ever held whole.
    assert plain.stat().st_size > 4 * (1 << 20)
    assert peak < len(stored)


def test_fractional_seconds_are_kept_in_utc(engine, app_data, tmp_path):
    campaign = app_data.campaign()
    app_data.contact(
        campaign, "refused", last_attempt_at=datetime(2026, 5, 1, 23, 59, 59, 900_000, UTC)
    )
    spool, streamed = tmp_path / "spool.csv", tmp_path / "export.csv"
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    render_spool(spool, streamed)
    assert parse(streamed.read_bytes())[1][5] == "2026-05-01T23:59:59.9Z"
    # The whole-frame renderer writes the same text (no trailing zeros either).
    with engine.connect() as conn:
        reference = render_rows(pd.read_sql(terminal_contacts_query(campaign), conn))
    assert parse(reference) == parse(streamed.read_bytes())


def test_megabyte_answers_rtl_marks_emoji_and_nul_read_back_exactly(engine, app_data, tmp_path):
    campaign = app_data.campaign()
    huge = "é" * 500_000 + "\n" + "x" * 500_000  # longer than a reader block
    # PostgreSQL text cannot hold NUL; SQLite (the demo) can, so it must survive too.
    external = "nul\x00inside" if engine.dialect.name == "sqlite" else "no-nul"
    contact = app_data.contact(campaign, "completed", external_contact_id=external)
    app_data.response(contact, campaign, huge, "\u202eright-to-left\u200f", "😀🎉")
    spool, streamed = tmp_path / "spool.csv", tmp_path / "export.csv"
    with open(spool, "wb") as spool_file:
        copy_terminal_contacts(engine, campaign, spool_file)
    render_spool(spool, streamed)

    previous = csv.field_size_limit(10**8)  # Python's csv module stops at 128 KiB by default
    try:
        row = parse(streamed.read_bytes())[1]
    finally:
        csv.field_size_limit(previous)
    assert row[2] == external
    assert row[7:10] == [huge, "\u202eright-to-left\u200f", "😀🎉"]
