"""Property: any text stored in the database reads back from the export CSV exactly,
apart from the documented injection prefix; NULL stays apart from ''; and no cell ever
starts a formula, whatever disguise its first character wears.

The oracle here is written from the spec (Unicode data, the readers' documented null
words), not from csv_format's own constants, so that both cannot be wrong the same way.
Other test modules import it.
"""

import csv
import io
import sys
import unicodedata
import uuid

import pyarrow as pa
import pyarrow.csv as pa_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandas._libs.parsers import STR_NA_VALUES
from sqlalchemy import delete

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
    spool, out = tmp_path / f"{uuid.uuid4()}.spool", tmp_path / f"{uuid.uuid4()}.csv"
    try:
        with open(spool, "wb") as spool_file:
            copy_terminal_contacts(engine, campaign, spool_file)
        render_spool(spool, out)
        exported = read_export(out.read_bytes())
    finally:
        with engine.begin() as conn:
            conn.execute(delete(survey_responses).where(survey_responses.c.campaign_id == campaign))
            conn.execute(delete(contacts).where(contacts.c.campaign_id == campaign))

    assert sorted(row["contact_id"] for row in exported) == sorted(stored)
    for row in exported:
        cells = [row[column] for column in ("external_contact_id", *CSV_COLUMNS[7:10])]
        for cell, text in zip(cells, stored[row["contact_id"]], strict=True):
            assert_cell_shows(cell, text)
