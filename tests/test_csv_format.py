import csv
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from voicesurvey_exports.app_db.contacts import write_spool_rows
from voicesurvey_exports.exports.csv_format import CSV_COLUMNS, render_rows, render_spool


def render_streaming(rows: pd.DataFrame, tmp_path) -> bytes:
    spool, out = tmp_path / "spool.csv", tmp_path / "out.csv"
    with open(spool, "w", encoding="utf-8", newline="") as spool_file:
        write_spool_rows(rows, spool_file)
    stats = render_spool(spool, out)
    body = out.read_bytes()
    assert (stats.row_count, stats.byte_count) == (len(rows), len(body))
    return body


@pytest.fixture(params=["reference", "streaming"])
def render_csv(request, tmp_path):
    """Both renderers must meet every rule of the CSV format."""
    if request.param == "reference":
        return render_rows
    return lambda rows: render_streaming(rows, tmp_path)


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
