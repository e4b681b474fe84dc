"""The export file in each format, from PostgreSQL's COPY spool: the filters narrow the
rows, the time zone changes how text timestamps are written, and every format carries
the same values for the same rows (a hypothesis property, the timestamp family of the
hardening issue included)."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import UTC, datetime, timedelta

import openpyxl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openpyxl.utils.escape import unescape
from sqlalchemy import DateTime, cast, delete, literal

from voicesurvey_exports.app_db.contacts import (
    ContactFilter,
    copy_terminal_contacts,
    count_terminal_contacts,
)
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import contacts, survey_responses
from voicesurvey_exports.export_file import timestamps, xlsx_format
from voicesurvey_exports.export_file.csv_format import CSV_COLUMNS, INJECTION_GUARD
from voicesurvey_exports.export_file.file_formats import (
    UnrepresentableValue,
    epoch_microseconds,
    render_spool_as,
)
from voicesurvey_exports.export_file.xlsx_format import ExcelLimitExceeded

from .conftest import AppData
from .test_csv_properties import instants, postgres_input, postgres_years, read_export

TEXT_FORMATS = ("csv", "jsonl", "xlsx")  # the formats that write timestamps as text
ALL_FORMATS = ("csv", "jsonl", "parquet", "xlsx")


def spool_and_render(engine, campaign, tmp_path, file_format, *, time_zone="UTC", **filters):
    spool = tmp_path / f"{uuid.uuid4()}.spool"
    out = tmp_path / f"{uuid.uuid4()}.{file_format}"
    with open(spool, "wb") as spool_file:
        rows = copy_terminal_contacts(
            engine,
            campaign,
            spool_file,
            contact_filter=ContactFilter(**filters),
            time_zone="UTC" if file_format == "parquet" else time_zone,
        )
    stats = render_spool_as(file_format, spool, out, time_zone=time_zone)
    assert stats.row_count == rows
    return out


def read_rows(file_format: str, path) -> list[dict]:
    """The rows as a reader of that format sees them; Parquet's timestamps as microseconds
    since 1970 (pyarrow cannot make datetimes of years outside 1-9999)."""
    body = path.read_bytes()
    if file_format == "csv":
        return read_export(body)
    if file_format == "jsonl":
        rows = [json.loads(line) for line in body.split(b"\n") if line]
        assert all(list(row) == list(CSV_COLUMNS) for row in rows)
        assert body == b"" or body.endswith(b"}\n")
        return rows
    if file_format == "parquet":
        table = pq.read_table(io.BytesIO(body))
        assert table.column_names == list(CSV_COLUMNS)
        for column in ("last_attempt_at", "completed_at"):
            index = table.schema.get_field_index(column)
            table = table.set_column(index, column, pc.cast(table.column(column), pa.int64()))
        return table.to_pylist()
    if file_format == "xlsx":
        workbook = openpyxl.load_workbook(io.BytesIO(body))
        [sheet] = workbook.worksheets
        header, *rows = sheet.iter_rows(values_only=True)
        assert header == CSV_COLUMNS
        # Excel's _xHHHH_ escape, which Excel decodes (openpyxl leaves it to its caller).
        return [
            {
                name: unescape(value) if isinstance(value, str) else value
                for name, value in zip(CSV_COLUMNS, row, strict=True)
            }
            for row in rows
        ]
    raise AssertionError(file_format)


def export(engine, campaign, tmp_path, file_format, **options) -> list[dict]:
    return read_rows(
        file_format, spool_and_render(engine, campaign, tmp_path, file_format, **options)
    )


@pytest.fixture
def app(postgres_url) -> AppData:
    return AppData(get_engine(postgres_url))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_outcomes_and_the_half_open_window_narrow_the_rows_and_their_count(app, tmp_path):
    campaign = app.campaign()
    start, end = at("2026-11-09T00:00:00+01:00"), at("2026-11-16T00:00:00+01:00")
    contacts_by_name = {
        "refused at the start": app.contact(campaign, "refused", last_attempt_at=start),
        "refused inside": app.contact(
            campaign, "refused", last_attempt_at=start + timedelta(days=2)
        ),
        "refused at the end": app.contact(campaign, "refused", last_attempt_at=end),
        "refused before": app.contact(
            campaign, "refused", last_attempt_at=start - timedelta(microseconds=1)
        ),
        "refused never attempted": app.contact(campaign, "refused", last_attempt_at=None),
        "excluded inside": app.contact(campaign, "excluded", last_attempt_at=start),
        "completed inside": app.contact(campaign, "completed", last_attempt_at=start),
        "pending inside": app.contact(campaign, "pending", last_attempt_at=start),
    }
    window = {"attempted_from": start, "attempted_to": end}
    cases = [
        ({"outcomes": ("refused",), **window}, ["refused at the start", "refused inside"]),
        (
            {"outcomes": ("refused", "excluded"), **window},
            ["refused at the start", "refused inside", "excluded inside"],
        ),
        (
            {"outcomes": ("refused",), "attempted_to": end},
            ["refused at the start", "refused inside", "refused before"],
        ),
        (
            {"outcomes": ("refused",), "attempted_from": start},
            ["refused at the start", "refused inside", "refused at the end"],
        ),
        (
            {"outcomes": ("refused",)},
            [name for name in contacts_by_name if name.startswith("refused")],
        ),
    ]
    for filters, names in cases:
        expected = sorted(str(contacts_by_name[name]) for name in names)
        for file_format in ALL_FORMATS:
            rows = export(app.engine, campaign, tmp_path, file_format, **filters)
            assert sorted(row["contact_id"] for row in rows) == expected, (filters, file_format)
        with app.engine.connect() as conn:
            assert count_terminal_contacts(conn, campaign, ContactFilter(**filters)) == len(names)


@pytest.mark.parametrize(
    ("time_zone", "last_attempt_at", "written"),
    [
        ("UTC", "2026-11-16T10:49:55Z", "2026-11-16T10:49:55Z"),
        ("America/New_York", "2026-11-16T10:49:55Z", "2026-11-16T05:49:55-05:00"),
        ("America/New_York", "2026-07-16T10:49:55.5Z", "2026-07-16T06:49:55.5-04:00"),
        ("Asia/Kolkata", "2026-11-16T10:49:55Z", "2026-11-16T16:19:55+05:30"),
        ("Europe/London", "2026-11-16T10:49:55Z", "2026-11-16T10:49:55+00:00"),
        ("Europe/Rome", "0044-03-15 12:00:00+00 BC", "-0043-03-15T12:49:56+00:49:56"),
        ("Europe/Rome", "infinity", "infinity"),
    ],
)
def test_a_time_zone_writes_its_local_time_with_its_offset(
    app, tmp_path, time_zone, last_attempt_at, written
):
    campaign = app.campaign()
    stored = cast(literal(last_attempt_at), DateTime(timezone=True))
    app.contact(campaign, "refused", last_attempt_at=stored)
    for file_format in TEXT_FORMATS:
        [row] = export(app.engine, campaign, tmp_path, file_format, time_zone=time_zone)
        assert row["last_attempt_at"] == written, file_format
    if last_attempt_at != "infinity":  # (Parquet cannot hold it: the next test)
        [row] = export(app.engine, campaign, tmp_path, "parquet", time_zone=time_zone)
        assert row["last_attempt_at"] == epoch_microseconds(
            timestamps.read_iso(written.replace("Z", "+00:00"))
        )


def test_parquet_fails_on_infinity_naming_the_contact_and_the_column(app, tmp_path):
    campaign = app.campaign()
    app.contact(campaign, "refused", last_attempt_at=at("2026-11-16T10:49:55+00:00"))
    contact = app.contact(
        campaign, "refused", last_attempt_at=cast(literal("-infinity"), DateTime(timezone=True))
    )
    with pytest.raises(UnrepresentableValue) as failed:
        spool_and_render(app.engine, campaign, tmp_path, "parquet")
    assert str(failed.value).startswith(
        f"contact {contact}: last_attempt_at is -infinity, which Parquet cannot hold"
    )


def test_parquet_fails_beyond_its_last_year(app, tmp_path):
    campaign = app.campaign()
    contact = app.contact(
        campaign,
        "refused",
        last_attempt_at=cast(literal("294276-12-31 00:00:00+00"), DateTime(timezone=True)),
    )
    with pytest.raises(UnrepresentableValue, match=f"contact {contact}: last_attempt_at"):
        spool_and_render(app.engine, campaign, tmp_path, "parquet")


def test_parquet_holds_strings_an_integer_and_utc_or_zoned_instants(app, tmp_path):
    campaign = app.campaign()
    contact = app.contact(
        campaign, "completed", attempts_count=3, last_attempt_at=at("2026-11-16T10:49:55+00:00")
    )
    app.response(contact, campaign, "", None, "=1+1")
    for time_zone in ("UTC", "Europe/Rome"):
        path = spool_and_render(app.engine, campaign, tmp_path, "parquet", time_zone=time_zone)
        table = pq.read_table(path)
        assert str(table.schema.field("last_attempt_at").type) == f"timestamp[us, tz={time_zone}]"
        assert table.schema.field("attempts_count").type == pa.int64()
        assert table.schema.field("contact_id").type == pa.string()
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
        [row] = table.to_pylist()
        assert row["last_attempt_at"] == at("2026-11-16T10:49:55+00:00")
        assert (row["q1_answer"], row["q2_answer"], row["q3_answer"]) == ("", None, "=1+1")
        assert row["attempts_count"] == 3


def test_an_empty_export_is_a_valid_empty_file_in_every_format(app, tmp_path):
    campaign = app.campaign()
    for file_format in ALL_FORMATS:
        assert export(app.engine, campaign, tmp_path, file_format) == []


# The property: the same generated rows carry the same values in every format.


def expected_microseconds(value: tuple[int, ...]) -> int:
    """Microseconds since 1970 of a generated UTC instant, by Python's datetime: years
    outside 1-9999 are moved by whole 400-year cycles (146,097 days each) into its range."""
    year, *rest = value
    cycles = 0
    while year < 1:
        year, cycles = year + 400, cycles - 1
    while year > 9999:
        year, cycles = year - 400, cycles + 1
    moved = datetime(year, *rest, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (moved.days + cycles * 146_097) * 86_400_000_000 + (
        moved.seconds * 1_000_000 + moved.microseconds
    )


answers = (
    st.none()
    | st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
        max_size=12,
    )
    | st.sampled_from(["", "=1+1", "_x000D_", "a\r\nb", "\t", "\x01\x1f", 'q"\\', "N/A", "null"])
)
# Parquet's microseconds since 1970 in an int64 reach 294247-01-10: later years fail the
# export (test_parquet_fails_beyond_its_last_year).
parquet_years = postgres_years.filter(lambda year: year <= 294246)
zones = st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata", "Europe/Paris"])


@settings(
    max_examples=25,
    deadline=None,
    # Each example exports four files: shrinking a failure would take minutes.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_format_carries_the_same_values_for_the_same_rows(postgres_url, tmp_path, data):
    engine = get_engine(postgres_url)
    app = AppData(engine)
    campaign = app.campaign()
    time_zone = data.draw(zones)
    rows = data.draw(
        st.lists(
            st.tuples(
                st.none() | instants(parquet_years),
                st.none() | instants(parquet_years),
                st.integers(0, 2**31 - 1),
                st.tuples(answers, answers, answers, answers),
            ),
            min_size=1,
            max_size=4,
        )
    )
    expected = {}
    for last_attempt_at, completed_at, attempts, (external, *texts) in rows:
        stored = [
            None if value is None else cast(literal(postgres_input(value)), DateTime(timezone=True))
            for value in (last_attempt_at, completed_at)
        ]
        contact = app.contact(
            campaign,
            "completed",
            attempts_count=attempts,
            last_attempt_at=stored[0],
            external_contact_id=external,
        )
        if completed_at is not None:
            with engine.begin() as conn:
                conn.execute(
                    survey_responses.insert().values(
                        id=uuid.uuid4(),
                        contact_id=contact,
                        campaign_id=campaign,
                        completed_at=stored[1],
                        q1_answer=texts[0],
                        q2_answer=texts[1],
                        q3_answer=texts[2],
                    )
                )
        else:
            texts = [None, None, None]
        expected[str(contact)] = {
            "attempts_count": attempts,
            "last_attempt_at": last_attempt_at,
            "completed_at": completed_at,
            "external_contact_id": external,
            "q1_answer": texts[0],
            "q2_answer": texts[1],
            "q3_answer": texts[2],
        }
    try:
        exported = {
            file_format: export(engine, campaign, tmp_path, file_format, time_zone=time_zone)
            for file_format in ALL_FORMATS
        }
    finally:
        with engine.begin() as conn:
            conn.execute(delete(survey_responses).where(survey_responses.c.campaign_id == campaign))
            conn.execute(delete(contacts).where(contacts.c.campaign_id == campaign))

    order = [row["contact_id"] for row in exported["csv"]]
    assert order == sorted(expected)
    for file_format, file_rows in exported.items():
        assert [row["contact_id"] for row in file_rows] == order, file_format
        for row in file_rows:
            want = expected[row["contact_id"]]
            assert row["campaign_id"] == str(campaign)
            assert row["outcome"] == "completed"
            assert int(row["attempts_count"]) == want["attempts_count"]
            for column in ("external_contact_id", "q1_answer", "q2_answer", "q3_answer"):
                cell = row[column]
                if file_format == "csv" and cell is not None and cell != want[column]:
                    cell = cell.removeprefix(INJECTION_GUARD)  # the CSV's formula guard
                assert cell == want[column], (file_format, column)
            for column in ("last_attempt_at", "completed_at"):
                value, cell = want[column], row[column]
                if value is None:
                    assert cell is None
                elif file_format == "parquet":
                    assert cell == expected_microseconds(value)
                else:
                    assert epoch_microseconds(timestamps.read_iso(cell)) == expected_microseconds(
                        value
                    ), (file_format, cell)
                    assert cell.endswith("Z") == (time_zone == "UTC"), cell
    # The text formats write the same timestamp text.
    for csv_row, json_row, xlsx_row in zip(
        exported["csv"], exported["jsonl"], exported["xlsx"], strict=True
    ):
        for column in ("last_attempt_at", "completed_at"):
            assert csv_row[column] == json_row[column] == xlsx_row[column]


def test_xlsx_keeps_text_as_stored_and_never_a_formula(app, tmp_path):
    campaign = app.campaign()
    texts = ['=HYPERLINK("http://x")', "a\r\nb", "_x000D_", "\x01\x1f\ttab", " lead ", "+1"]
    for text in texts:
        contact = app.contact(campaign, "completed", external_contact_id=text, attempts_count=2)
        app.response(contact, campaign, text)
    path = spool_and_render(app.engine, campaign, tmp_path, "xlsx")
    rows = read_rows("xlsx", path)
    assert sorted(row["external_contact_id"] for row in rows) == sorted(texts)
    assert all(row["attempts_count"] == 2 for row in rows)
    sheet = openpyxl.load_workbook(path).worksheets[0]
    assert all(cell.data_type != "f" for row in sheet.iter_rows() for cell in row)


def test_xlsx_is_deflated_and_smaller_than_the_csv(app, tmp_path):
    # Its sheet part was once stored uncompressed: four times the CSV's bytes to upload.
    campaign = app.campaign()
    for index in range(2_000):
        contact = app.contact(campaign, "completed", attempts_count=index % 5)
        app.response(contact, campaign, f"answer {index % 7}", "Très bien 👍", None)
    xlsx = spool_and_render(app.engine, campaign, tmp_path, "xlsx")
    csv = spool_and_render(app.engine, campaign, tmp_path, "csv")
    with zipfile.ZipFile(xlsx) as workbook:
        assert {info.compress_type for info in workbook.infolist()} == {zipfile.ZIP_DEFLATED}
    assert xlsx.stat().st_size < csv.stat().st_size / 2
    assert len(read_rows("xlsx", xlsx)) == 2_000


def test_text_formats_escape_only_what_needs_it_in_a_mixed_block(app, tmp_path):
    # Escaping runs over the values that hold a special character only, and puts them
    # back in place: plain and special values interleaved must all come back as stored.
    campaign = app.campaign()
    specials = ['say "hi"', "back\\slash", "a\r\nb", "<&>", "_x0041_", "\x01\x07\x1f", "\ufffe"]
    texts = [specials[i % 7] if i % 3 == 0 else f"plain {i}" for i in range(300)]
    for text in texts:
        contact = app.contact(campaign, "completed", external_contact_id=text)
        app.response(contact, campaign, text, None, text)
    for file_format in ("jsonl", "xlsx"):
        rows = export(app.engine, campaign, tmp_path, file_format)
        assert sorted(row["external_contact_id"] for row in rows) == sorted(texts)
        assert all(row["q1_answer"] == row["external_contact_id"] for row in rows)
        assert all(row["q3_answer"] == row["external_contact_id"] for row in rows)


def test_xlsx_fails_naming_excels_cell_and_row_limits(app, tmp_path, monkeypatch):
    campaign = app.campaign()
    contact = app.contact(campaign, "completed")
    app.response(contact, campaign, "x" * 32_767, "\U0001f600" * 16_384)
    with pytest.raises(ExcelLimitExceeded) as failed:
        spool_and_render(app.engine, campaign, tmp_path, "xlsx")
    assert str(failed.value).startswith(
        f"contact {contact}: q2_answer has 32,768 characters, more than the 32,767 an Excel "
        "cell holds"
    )
    app.contact(campaign, "refused")
    monkeypatch.setattr(xlsx_format, "MAX_CONTACTS", 1)
    with pytest.raises(ExcelLimitExceeded, match="more than 1 contacts: an Excel worksheet holds"):
        spool_and_render(app.engine, campaign, tmp_path, "xlsx")


def test_sqlite_writes_the_zones_time_as_postgresql_does(sqlite_url, tmp_path):
    """The demo's path (pandas spool) renders a zone's time and offset as COPY does."""
    app = AppData(get_engine(sqlite_url))
    campaign = app.campaign()
    app.contact(campaign, "refused", last_attempt_at=at("2026-11-16T10:49:55.25+00:00"))
    for time_zone, written in (
        ("America/New_York", "2026-11-16T05:49:55.25-05:00"),
        ("Asia/Kolkata", "2026-11-16T16:19:55.25+05:30"),
        ("UTC", "2026-11-16T10:49:55.25Z"),
    ):
        for file_format in TEXT_FORMATS:
            [row] = export(app.engine, campaign, tmp_path, file_format, time_zone=time_zone)
            assert row["last_attempt_at"] == written, (time_zone, file_format)
