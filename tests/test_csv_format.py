import csv
import gzip
import hashlib
import io
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicesurvey_exports.app_db.contacts import write_spool_rows
from voicesurvey_exports.export_file import csv_format
from voicesurvey_exports.export_file.csv_format import (
    BOM,
    CSV_COLUMNS,
    HEADER,
    render_rows,
    render_spool,
)

from .test_csv_properties import (
    DISGUISES,
    FORMULA_TRIGGERS,
    NULL_MARKER_WORDS,
    assert_cell_shows,
    assert_timestamp_shows,
    read_export,
)


def render_streaming(rows: pd.DataFrame, tmp_path, **options) -> bytes:
    """The file render_spool writes (with options: as stored, BOM and gzip included);
    its stats must state the rows, and the size and SHA-256 of exactly these bytes."""
    spool, out = tmp_path / "spool.csv", tmp_path / "out.csv"
    with open(spool, "wb") as spool_file:
        write_spool_rows(rows, spool_file)
    stats = render_spool(spool, out, **options)
    body = out.read_bytes()
    assert (stats.row_count, stats.byte_count) == (len(rows), len(body))
    assert stats.sha256 == hashlib.sha256(body).hexdigest()
    return body


def csv_inside(stored: bytes) -> bytes:
    """The CSV inside a file stored with both options: gunzipped, after its BOM."""
    body = gzip.decompress(stored)
    assert body.startswith(BOM + HEADER)
    return body.removeprefix(BOM)


@pytest.fixture(params=["reference", "streaming", "streaming with bom and gzip"])
def render_csv(request, tmp_path):
    """Both renderers must meet every rule of the CSV format, and the options keep them."""
    if request.param == "reference":
        return render_rows
    if request.param == "streaming":
        return lambda rows: render_streaming(rows, tmp_path)
    return lambda rows: csv_inside(render_streaming(rows, tmp_path, bom=True, gzip=True))


def rows(*records: dict) -> pd.DataFrame:
    base = {
        "campaign_id": uuid.UUID(int=1),
        "contact_id": uuid.UUID(int=2),
        "external_contact_id": "ext-1",
        "outcome": "completed",
        "attempts_count": 2,
        "last_attempt_at": datetime(2026, 11, 16, 9, 49, 55, tzinfo=UTC),
        "completed_at": None,
        "q1_answer": None,
        "q2_answer": None,
        "q3_answer": None,
    }
    return pd.DataFrame([{**base, **record} for record in records], columns=list(CSV_COLUMNS))


def parse(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def test_header_is_the_documented_columns_in_order(render_csv):
    assert parse(render_csv(rows({})))[0] == list(CSV_COLUMNS)


def test_campaign_without_terminal_contacts_gives_header_only_file(render_csv):
    assert parse(render_csv(rows().iloc[0:0])) == [list(CSV_COLUMNS)]


def test_commas_quotes_newlines_and_unicode_survive_a_round_trip(render_csv):
    answers = ['Sì, "molto" bene', "Zeile eins\nZeile zwei\r\ndrei", "Größe 🎉 ✓"]
    parsed = parse(
        render_csv(
            rows({"q1_answer": answers[0], "q2_answer": answers[1], "q3_answer": answers[2]})
        )
    )
    assert parsed[1][7:10] == answers


def test_rows_end_with_crlf_as_rfc_4180_says(render_csv):
    body = render_csv(rows({}))
    assert body.count(b"\r\n") == 2
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_timestamps_are_iso_8601_utc_with_z_and_null_is_empty(render_csv):
    berlin = timezone(timedelta(hours=1))
    parsed = parse(
        render_csv(rows({"last_attempt_at": datetime(2026, 11, 16, 10, 49, 55, tzinfo=berlin)}))
    )
    assert parsed[1][5] == "2026-11-16T09:49:55Z"
    assert parsed[1][6] == ""


def test_naive_timestamps_from_sqlite_are_read_as_utc(render_csv):
    parsed = parse(render_csv(rows({"completed_at": datetime(2026, 1, 2, 3, 4, 5)})))
    assert parsed[1][6] == "2026-01-02T03:04:05Z"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    offset_minutes=st.none() | st.integers(-14 * 60, 14 * 60),
)
def test_any_python_datetime_is_written_exactly_in_utc(render_csv, value, offset_minutes):
    """Years 1-9999 (pandas' own datetimes stop at 1677-2262), fractions kept, from
    naive (SQLite: UTC) and aware values, by both renderers."""
    if offset_minutes is not None:
        value = value.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    parsed = parse(render_csv(rows({"last_attempt_at": value, "completed_at": value})))
    utc = value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    for cell in parsed[1][5:7]:
        assert_timestamp_shows(cell, utc.timetuple()[:6] + (utc.microsecond,))


def test_formula_prefixes_in_free_text_are_neutralised_with_a_quote(render_csv):
    dangerous = ['=HYPERLINK("http://x")', "+1+2", "-3", "@SUM(A1)", "\tcmd", "\rcmd"]
    for text in dangerous:
        parsed = parse(
            render_csv(rows({"external_contact_id": text, "q1_answer": text, "q3_answer": text}))
        )
        assert parsed[1][2] == "'" + text
        assert parsed[1][7] == "'" + text
        assert parsed[1][9] == "'" + text


def test_harmless_text_is_not_prefixed(render_csv):
    parsed = parse(
        render_csv(rows({"q1_answer": "a = b", "q2_answer": "it's 5-3", "q3_answer": ""}))
    )
    assert parsed[1][7:10] == ["a = b", "it's 5-3", ""]


def test_ids_and_counts_are_plain_text(render_csv):
    parsed = parse(render_csv(rows({})))
    assert parsed[1][:5] == [
        str(uuid.UUID(int=1)),
        str(uuid.UUID(int=2)),
        "ext-1",
        "completed",
        "2",
    ]


def test_words_that_csv_readers_take_for_null_read_back_exactly(render_csv):
    # "N/A", "NULL", "NaN", "#N/A", "None", "<NA>"...: answers, not missing values.
    words = [variant for word in NULL_MARKER_WORDS for variant in (word, word.lower(), f" {word}")]
    body = render_csv(
        rows(
            *({"external_contact_id": word, "q1_answer": word, "q3_answer": word} for word in words)
        )
    )
    parsed = parse(body)[1:]
    # Those starting with "-" ("-NaN", " -1.#IND") also get the formula guard.
    expected = ["'" + word if word.lstrip().startswith("-") else word for word in words]
    assert [row[2] for row in parsed] == expected
    assert [row[7] for row in parsed] == expected
    assert [row[9] for row in parsed] == expected


def test_streamed_file_keeps_empty_text_apart_from_null(tmp_path):
    body = render_streaming(
        rows({"external_contact_id": "", "q1_answer": None, "q2_answer": "", "q3_answer": "NA"}),
        tmp_path,
    )
    line = body.split(b"\r\n")[1]
    assert line.startswith(b'"00000000-0000-0000-0000-000000000001",')
    # external_contact_id '', completed_at and q1 NULL, q2 '': '' is quoted, NULL is not.
    assert line.endswith(b',"","completed",2,"2026-11-16T09:49:55Z",,,"","NA"')
    row = read_export(body)[0]
    assert [row["external_contact_id"], row["q1_answer"], row["q2_answer"], row["q3_answer"]] == [
        "",
        None,
        "",
        "NA",
    ]


def test_stored_formula_characters_are_those_a_fresh_scan_of_unicode_finds():
    """The guard's characters are stored for this Python's Unicode version (a run worker
    does not scan Unicode at import): they must be what the scan finds today, so that a
    change to the rules (or a new Python) cannot leave a stale table behind."""
    version = unicodedata.unidata_version
    assert version in csv_format._SCANNED_RANGES, f"no stored ranges for Unicode {version}"
    stored_skipped, stored_triggers = csv_format._formula_characters()
    skipped, triggers = csv_format._formula_code_points()
    assert stored_triggers == triggers
    assert stored_skipped == skipped


def test_formula_triggers_in_every_disguise_are_neutralised(render_csv):
    # Every character NFKC folds to = + - @ (full-width, small, super/subscript), U+2212,
    # and each behind whitespace, NBSP, zero-width and bidi characters, or a mix of them.
    disguises = ["", *DISGUISES, "  ", " \u200b\u00a0", "\ufeff\u202e ", "\u3000\u2060\u200f"]
    dangerous = [
        disguise + trigger + "1+1" for trigger in FORMULA_TRIGGERS for disguise in disguises
    ]
    assert {"\uff1d", "\ufe66", "\ufe62", "\ufe63", "\ufe6b", "\u207a", "\u208c", "\u2212"} <= set(
        FORMULA_TRIGGERS
    )
    parsed = parse(
        render_csv(rows(*({"external_contact_id": text, "q2_answer": text} for text in dangerous)))
    )
    assert [row[2] for row in parsed[1:]] == ["'" + text for text in dangerous]
    assert [row[8] for row in parsed[1:]] == ["'" + text for text in dangerous]
    for text, row in zip(dangerous, parsed[1:], strict=True):
        assert_cell_shows(row[8], text)


@pytest.mark.parametrize(
    "dtype", [pd.ArrowDtype(pa.string()), "string[pyarrow]", "string[python]", object]
)
def test_formula_guard_is_the_same_rule_for_every_string_type(dtype):
    # Every string type is matched as Arrow strings, in RE2: one pattern, one rule.
    texts = [" =1", "\u200b+1", "＝1", "\u2212 2", "\t", "\u00a0x", "a=b", "", None]
    guarded = csv_format.guard_formula(pd.Series(texts, dtype=dtype))
    assert [None if pd.isna(cell) else cell for cell in guarded] == [
        "' =1",
        "'\u200b+1",
        "'＝1",
        "'\u2212 2",
        "'\t",
        "\u00a0x",
        "a=b",
        "",
        None,
    ]


def test_text_that_only_looks_odd_is_not_prefixed(render_csv):
    harmless = [
        " a = b",
        "\u00a0hello",
        "\u200bword",
        "\ufeffBOM first",
        "\u200fright-to-left",
        "１２３ full-width digits",
        "a@b.example",
        "'already quoted",
        "5-3",
        " ",
        "\u00a0\u200b",
        "",
    ]
    parsed = parse(render_csv(rows(*({"q1_answer": text} for text in harmless))))
    assert [row[7] for row in parsed[1:]] == harmless


def test_largest_reader_block_is_one_arrow_accepts():
    # Arrow's block_size is an int32: 2 GiB raises OverflowError.
    largest = csv_format.MAX_SPOOL_BLOCK_BYTES
    assert largest >= 512 * 1024 * 1024
    assert pa_csv.ReadOptions(block_size=largest).block_size == largest


def test_row_longer_than_the_largest_block_fails_with_a_clear_error(tmp_path, monkeypatch):
    """Without a gigabyte file: Arrow gets 4 KiB blocks whatever size render_spool asks
    for, so a 10 KB row is "too long" for every block size it tries."""
    asked = []
    open_csv = pa_csv.open_csv

    def open_csv_with_small_blocks(source, read_options, **kwargs):
        asked.append(read_options.block_size)
        read_options.block_size = 4096
        return open_csv(source, read_options=read_options, **kwargs)

    monkeypatch.setattr(csv_format.pa_csv, "open_csv", open_csv_with_small_blocks)
    with pytest.raises(ValueError) as raised:
        render_streaming(rows({"q1_answer": "x" * 10_000}), tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "1 GiB" in message and "row" in message
    # It grew the blocks up to the largest Arrow accepts, then stopped.
    assert asked[0] == csv_format.SPOOL_BLOCK_BYTES
    assert asked == sorted(asked) and asked[-1] == csv_format.MAX_SPOOL_BLOCK_BYTES


AWKWARD_ROWS = rows(
    {"external_contact_id": "=cmd()", "q1_answer": "Größe 🎉 ✓", "q2_answer": "a\r\nb"},
    {"outcome": "refused", "q1_answer": "", "q3_answer": "N/A"},
)


def test_bom_option_puts_the_byte_order_mark_before_the_same_bytes(tmp_path):
    plain = render_streaming(AWKWARD_ROWS, tmp_path)

    with_bom = render_streaming(AWKWARD_ROWS, tmp_path, bom=True)

    assert with_bom[:3] == b"\xef\xbb\xbf"
    assert with_bom == BOM + plain
    # A reader that honours the mark (Excel, utf-8-sig) gets the reference's rows.
    assert parse(with_bom.decode("utf-8-sig").encode()) == parse(render_rows(AWKWARD_ROWS))


@pytest.mark.parametrize("bom", [False, True], ids=["gzip", "gzip with bom"])
def test_gzip_option_stores_the_gzip_of_exactly_the_same_csv(tmp_path, bom):
    uncompressed = render_streaming(AWKWARD_ROWS, tmp_path, bom=bom)

    stored = render_streaming(AWKWARD_ROWS, tmp_path, bom=bom, gzip=True)

    assert stored[:2] == b"\x1f\x8b"  # a gzip member; size and hash are of these bytes
    assert gzip.decompress(stored) == uncompressed


def test_the_same_csv_always_gzips_to_the_same_bytes(tmp_path):
    first = render_streaming(AWKWARD_ROWS, tmp_path, gzip=True)
    second = render_streaming(AWKWARD_ROWS, tmp_path, gzip=True)
    assert first == second
    # No time (MTIME 0) and no file name (FLG without FNAME) in the gzip header.
    assert first[3] == 0 and first[4:8] == bytes(4)


@pytest.mark.parametrize(
    ("options", "inside"),
    [
        ({"bom": True}, lambda stored: stored),
        ({"gzip": True}, gzip.decompress),
        ({"bom": True, "gzip": True}, gzip.decompress),
    ],
    ids=["bom", "gzip", "bom and gzip"],
)
def test_header_only_file_keeps_its_options(tmp_path, options, inside):
    stored = render_streaming(rows().iloc[0:0], tmp_path, **options)
    assert inside(stored) == (BOM if options.get("bom") else b"") + HEADER


def test_a_row_longer_than_a_block_gzips_whole_after_the_retry(tmp_path, monkeypatch):
    """Blocks too small for a row make render_spool start the file again: the gzip
    stream it then writes must be one whole member, not the rest of the first."""
    monkeypatch.setattr(csv_format, "SPOOL_BLOCK_BYTES", 4096)
    long_rows = rows({"q1_answer": "x" * 10_000}, {"q1_answer": "y" * 50_000})
    plain = render_streaming(long_rows, tmp_path, bom=True)
    assert gzip.decompress(render_streaming(long_rows, tmp_path, bom=True, gzip=True)) == plain
