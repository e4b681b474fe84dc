"""Properties: any text stored in the database reads back from the export CSV exactly,
apart from the documented injection prefix; NULL stays apart from ''; no cell ever
starts a formula, whatever disguise its first character wears; and every timestamp the
database can store is exported exactly.

The oracle here is written from the spec (Unicode data, the readers' documented null
words), not from csv_format's own constants, so that both cannot be wrong the same way.
Other test modules import it.
"""

import csv
import io
import sys
import unicodedata
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.csv as pa_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandas._libs.parsers import STR_NA_VALUES
from sqlalchemy import DateTime, cast, delete, literal

from voicesurvey_exports.app_db.contacts import copy_terminal_contacts
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import contacts, survey_responses
from voicesurvey_exports.export_file.csv_format import CSV_COLUMNS, INJECTION_GUARD, render_spool

from .conftest import AppData

# Every word that Arrow's CSV reader or pandas' read_csv reads as missing by default.
NULL_MARKER_WORDS = sorted((set(pa_csv.ConvertOptions().null_values) | set(STR_NA_VALUES)) - {""})

# What a spreadsheet reads as the start of a formula (OWASP CSV injection), and U+2212
# MINUS SIGN, which some spreadsheets read as "-".
FORMULA_STARTS = ("=", "+", "-", "@", "\u2212")
# ... in every form that NFKC folds to one of them: full-width, small, super/subscript.
FORMULA_TRIGGERS = sorted(
    chr(cp)
    for cp in range(sys.maxunicode + 1)
    if unicodedata.normalize("NFKC", chr(cp)).startswith(FORMULA_STARTS)
)
# Tab, CR and LF were always guarded: some spreadsheets skip them and then see "=".
LEADING_CONTROL = ("\t", "\r", "\n")
# Characters that show nothing, or only blank space, before a cell's first visible one.
DISGUISES = (
    *(" ", "\u00a0", "\u2007", "\u202f", "\u3000", "\u2028", "\t", "\x0b", "\x0c", "\x1f"),
    *("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e", "\u061c"),
    *("\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e"),
    *("\u2066", "\u2067", "\u2068", "\u2069"),
)


def first_visible(text: str) -> str:
    """The first character a spreadsheet shows: skip whitespace, control and format chars."""
    for char in text:
        if not (char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")):
            return char
    return ""


def starts_formula(text: str) -> bool:
    first = first_visible(text)
    return bool(first) and unicodedata.normalize("NFKC", first).startswith(FORMULA_STARTS)


def may_hold_a_trigger(text: str) -> bool:
    """False when no character of the text could start a formula: it must not be guarded."""
    folded = unicodedata.normalize("NFKC", text)
    return any(char in folded for char in FORMULA_STARTS + LEADING_CONTROL)


def read_export(body: bytes) -> list[dict[str, str | None]]:
    """The data rows as a NULL-aware CSV reader sees them: None for an unquoted empty
    field (NULL), '' for a quoted one. Python's csv module must read the same text."""
    table = pa_csv.read_csv(
        io.BytesIO(body),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={column: pa.string() for column in CSV_COLUMNS},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    assert table.column_names == list(CSV_COLUMNS)
    rows = table.to_pylist()
    parsed = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert [list(CSV_COLUMNS)] + [
        ["" if value is None else value for value in row.values()] for row in rows
    ] == parsed
    return rows


def any_case(word: str) -> st.SearchStrategy[str]:
    def flip(flips: list[bool]) -> str:
        return "".join(c.swapcase() if f else c for c, f in zip(word, flips, strict=True))

    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(flip)


# PostgreSQL text cannot hold NUL; everything else Unicode can be stored, so generate it.
any_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=200,
)
spaces = st.text(alphabet=" ", max_size=2)
null_marker = st.tuples(spaces, st.sampled_from(NULL_MARKER_WORDS).flatmap(any_case), spaces).map(
    "".join
)
formula = st.tuples(
    st.text(alphabet=st.sampled_from(DISGUISES), max_size=3),
    st.sampled_from(FORMULA_TRIGGERS + list(LEADING_CONTROL)),
    st.sampled_from(["", "1+1", 'HYPERLINK("http://x")', "cmd|' /C calc'!A0"]) | any_text,
).map("".join)
stored_text = st.one_of(any_text, null_marker, formula, st.just(""))
contact_rows = st.lists(
    st.tuples(st.none() | stored_text, st.lists(st.none() | stored_text, min_size=3, max_size=3)),
    min_size=1,
    max_size=3,
)


def assert_cell_shows(cell: str | None, stored: str | None) -> None:
    if stored is None:
        assert cell is None  # NULL: an unquoted empty field
        return
    assert cell in (stored, INJECTION_GUARD + stored)  # the text itself, maybe guarded
    assert not starts_formula(cell), f"{cell!r} starts a formula"
    assert not cell.startswith(LEADING_CONTROL)
    if not may_hold_a_trigger(stored):
        assert cell == stored  # harmless text is never prefixed


def streamed_export_of(engine, campaign, tmp_path) -> list[dict]:
    """The campaign's rows as the streaming export writes and a reader reads them; its
    contacts are deleted afterwards (hypothesis runs many examples on one database)."""
    spool, out = tmp_path / f"{uuid.uuid4()}.spool", tmp_path / f"{uuid.uuid4()}.csv"
    try:
        with open(spool, "wb") as spool_file:
            copy_terminal_contacts(engine, campaign, spool_file)
        render_spool(spool, out)
        return read_export(out.read_bytes())
    finally:
        with engine.begin() as conn:
            conn.execute(delete(survey_responses).where(survey_responses.c.campaign_id == campaign))
            conn.execute(delete(contacts).where(contacts.c.campaign_id == campaign))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=contact_rows)
def test_stored_text_reads_back_exactly_and_never_starts_a_formula(database_url, tmp_path, rows):
    """On PostgreSQL (COPY spool) and SQLite (pandas spool) alike."""
    engine = get_engine(database_url)
    data = AppData(engine)
    campaign = data.campaign()
    stored = {}
    for external_id, answers in rows:
        contact = data.contact(campaign, "completed", external_contact_id=external_id)
        data.response(contact, campaign, *answers)
        stored[str(contact)] = [external_id, *answers]
    exported = streamed_export_of(engine, campaign, tmp_path)

    assert sorted(row["contact_id"] for row in exported) == sorted(stored)
    for row in exported:
        cells = [row[column] for column in ("external_contact_id", *CSV_COLUMNS[7:10])]
        for cell, text in zip(cells, stored[row["contact_id"]], strict=True):
            assert_cell_shows(cell, text)


# PostgreSQL's timestamptz range, in astronomical years (1 BC is year 0): from
# 4713-11-24 BC to 294276-12-31 AD.
FIRST_YEAR, LAST_YEAR = -4712, 294276
INFINITIES = ("infinity", "-infinity")


def days_in_month(year: int, month: int) -> int:
    """Proleptic Gregorian, written from the rule (Python's calendar stops at year 1)."""
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


@st.composite
def instants(draw, years: st.SearchStrategy[int]) -> tuple[int, ...]:
    """(astronomical year, month, day, hour, minute, second, microsecond) in UTC."""
    year = draw(years)
    month = draw(st.integers(11 if year == FIRST_YEAR else 1, 12))
    first_day = 24 if (year, month) == (FIRST_YEAR, 11) else 1
    day = draw(st.integers(first_day, days_in_month(year, month)))
    time_of_day = draw(st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)))
    microsecond = draw(st.sampled_from([0, 1, 120_000, 999_999]) | st.integers(0, 999_999))
    return (year, month, day, *time_of_day, microsecond)


EDGE_YEARS = [FIRST_YEAR, -43, -1, 0, 1, 1969, 9999, 10000, 12026, LAST_YEAR]
postgres_years = st.sampled_from(EDGE_YEARS) | st.integers(1, 9999) | st.integers(-4712, 294276)
# Python's datetime, hence SQLAlchemy on SQLite, holds years 1-9999 and no infinity.
sqlite_years = st.sampled_from([1, 1969, 9999]) | st.integers(1, 9999)


def postgres_input(value: tuple[int, ...] | str) -> str:
    """The instant as PostgreSQL reads it: years BC counted from 1, with " BC"."""
    if isinstance(value, str):
        return value
    year, month, day, hour, minute, second, microsecond = value
    era = "" if year >= 1 else " BC"
    return (
        f"{year if year >= 1 else 1 - year:04d}-{month:02d}-{day:02d} "
        f"{hour:02d}:{minute:02d}:{second:02d}.{microsecond:06d}+00{era}"
    )


def assert_timestamp_shows(cell: str | None, value: tuple[int, ...] | str | None) -> None:
    """The contract (docs/export-file.md): ISO 8601 UTC with Z; the fraction when there is
    one (up to microseconds, trailing zeros may go); years outside 0000-9999 signed,
    astronomical."""
    if value is None or isinstance(value, str):
        assert cell == value
        return
    year, month, day, hour, minute, second, microsecond = value
    year_text = f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):04d}"
    whole = f"{year_text}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if microsecond == 0:
        assert cell == whole + "Z"
    else:
        digits = cell.removeprefix(whole + ".").removesuffix("Z")
        assert cell == f"{whole}.{digits}Z" and digits.isdigit() and len(digits) <= 6, cell
        assert int(digits.ljust(6, "0")) == microsecond, cell
    if 1 <= year <= 9999:  # a reader outside this project agrees
        parsed = datetime.fromisoformat(cell)
        assert parsed == datetime(*value, tzinfo=UTC)


def stored_timestamps(years: st.SearchStrategy[int], infinities: bool):
    value = instants(years)
    if infinities:
        value = value | st.sampled_from(INFINITIES)
    # Per contact: last_attempt_at, and completed_at of its response (None: no response;
    # a response always has one).
    return st.lists(
        st.tuples(st.none() | value, st.none() | st.tuples(value)), min_size=1, max_size=4
    )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_stored_timestamps_read_back_exactly(database_url, tmp_path, data):
    """Every timestamp PostgreSQL can store (BC, beyond 9999, fractions, infinities), and
    what SQLite can (Python's years 1-9999), is exported exactly."""
    engine = get_engine(database_url)
    postgres = engine.dialect.name == "postgresql"
    rows = data.draw(
        stored_timestamps(postgres_years if postgres else sqlite_years, infinities=postgres)
    )

    def stored(value):
        if value is None or not postgres:
            return None if value is None else datetime(*value)
        return cast(literal(postgres_input(value)), DateTime(timezone=True))

    app = AppData(engine)
    campaign = app.campaign()
    expected = {}
    for last_attempt_at, response in rows:
        contact = app.contact(campaign, "completed", last_attempt_at=stored(last_attempt_at))
        if response is not None:
            with engine.begin() as conn:
                conn.execute(
                    survey_responses.insert().values(
                        id=uuid.uuid4(),
                        contact_id=contact,
                        campaign_id=campaign,
                        completed_at=stored(response[0]),
                    )
                )
        expected[str(contact)] = (last_attempt_at, None if response is None else response[0])
    exported = streamed_export_of(engine, campaign, tmp_path)

    assert sorted(row["contact_id"] for row in exported) == sorted(expected)
    for row in exported:
        last_attempt_at, completed_at = expected[row["contact_id"]]
        assert_timestamp_shows(row["last_attempt_at"], last_attempt_at)
        assert_timestamp_shows(row["completed_at"], completed_at)
