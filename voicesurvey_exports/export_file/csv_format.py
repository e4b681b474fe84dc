"""The export CSV: columns, cell formatting and the formula-injection guard.

UTF-8, a header row, RFC 4180 quoting with CRLF row ends; timestamps as ISO 8601
UTC with a ``Z``, exactly as stored (timestamps.py); NULL as an empty field. Stored text
reads back exactly, apart from the ``'`` that guards a cell a spreadsheet would run as a
formula.

Two renderers produce files that parse to the same rows:
- ``render_spool`` streams: it reads the extract's raw CSV spool in small Arrow
  blocks, formats them with Arrow and pandas (Arrow-backed) a few at a time, checks that
  every timestamp reads back as stored, and writes them with Arrow's CSV writer. Memory
  stays flat whatever the campaign size. The pipeline uses it.
- ``render_rows`` renders a whole DataFrame with ``DataFrame.to_csv``: the
  straightforward reference the streaming path is tested against.

A request's options change only the file's envelope: ``bom`` puts the UTF-8 byte-order
mark before the header (Excel then reads the file as UTF-8), ``gzip`` compresses the
same bytes as they are written.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import ctypes
import gzip as gzip_format
import hashlib
import io
import itertools
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from . import timestamps
from .background import WriteBehind, read_ahead

CSV_COLUMNS = (
    "campaign_id",
    "contact_id",
    "external_contact_id",
    "outcome",
    "attempts_count",
    "last_attempt_at",
    "completed_at",
    "q1_answer",
    "q2_answer",
    "q3_answer",
)
# The column contract: each column's type as the file writes it (empty cell = no value).
COLUMN_TYPES = {
    "campaign_id": "uuid",
    "contact_id": "uuid",
    "external_contact_id": "text",
    "outcome": "text",
    "attempts_count": "integer",
    "last_attempt_at": "timestamp",
    "completed_at": "timestamp",
    "q1_answer": "text",
    "q2_answer": "text",
    "q3_answer": "text",
}
assert tuple(COLUMN_TYPES) == CSV_COLUMNS
UUID_COLUMNS = ("campaign_id", "contact_id")
TIMESTAMP_COLUMNS = ("last_attempt_at", "completed_at")
# Cells that people or callers typed: the only ones that can carry a formula.
FREE_TEXT_COLUMNS = ("external_contact_id", "q1_answer", "q2_answer", "q3_answer")
INJECTION_GUARD = "'"
ARROW_STRING = pd.ArrowDtype(pa.string())
HEADER = (",".join(CSV_COLUMNS) + "\r\n").encode("utf-8")
# The UTF-8 byte-order mark (EF BB BF) that the `bom` option writes before the header.
BOM = codecs.BOM_UTF8
# gzip: level 6 (zlib's default balance of speed and size); mtime 0 and no file name in
# the gzip header, so that the same CSV always compresses to the same bytes.
GZIP_LEVEL = 6

# OWASP CSV injection: a spreadsheet runs a cell whose first character is one of these
# as a formula. U+2212 MINUS SIGN too, which some spreadsheets take for "-".
FORMULA_STARTS = ("=", "+", "-", "@", "\u2212")
# Tab, CR and LF start a guarded cell as well: some spreadsheets skip them, then see "=".
LEADING_CONTROL = ("\t", "\r", "\n")
# Code points that Unicode's Default_Ignorable_Code_Point property adds to the control and
# format characters (variation selectors, Hangul fillers, tag and reserved ranges): they
# show nothing. unicodedata does not expose the property, so its few ranges are listed.
_DEFAULT_IGNORABLE_EXTRA = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
)


# The Unicode planes scanned for the characters below: the others hold only CJK ideographs
# (2, 3), nothing yet (4-13) or private use (15, 16). Three planes, not all seventeen,
# keep the import-time scan at about 40 ms.
_SCANNED_PLANES = (0, 1, 14)


def _formula_code_points() -> tuple[list[int], list[int]]:
    """(characters a spreadsheet may skip or not show before a formula, formula triggers)

    Computed from the running Python's Unicode data rather than typed in, so that no
    full-width, small or super/subscript form of a trigger is forgotten: spreadsheets
    fold those with NFKC ("＝1+1" runs as "=1+1").
    """
    skipped = {cp for low, high in _DEFAULT_IGNORABLE_EXTRA for cp in range(low, high + 1)}
    triggers = {ord(char) for char in FORMULA_STARTS + LEADING_CONTROL}
    for plane in _SCANNED_PLANES:
        for cp in range(plane << 16, (plane + 1) << 16):
            char = chr(cp)
            # Whitespace (NBSP, U+3000...), control and format characters (ZWSP U+200B, word
            # joiner U+2060, BOM U+FEFF, LRM/RLM and the other bidi marks): invisible.
            if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
                skipped.add(cp)
            # Only characters with a decomposition can fold to something else under NFKC.
            if unicodedata.decomposition(char) and unicodedata.normalize("NFKC", char).startswith(
                FORMULA_STARTS
            ):
                triggers.add(cp)
    # Tab, CR and LF are triggers themselves, so not skipped.
    return sorted(skipped - triggers), sorted(triggers)


# The scan's result for the Unicode version of the Python this project runs on (3.11:
# Unicode 14.0.0), as (first, last) code point ranges: every run worker imports this
# module, and the scan cost it 40-90 ms of CPU. tests/test_csv_format.py checks these
# ranges against a fresh scan; under another Unicode version the scan runs at import.
_SCANNED_RANGES = {
    "14.0.0": (
        (  # skipped
            (0x0000, 0x0008),
            (0x000B, 0x000C),
            (0x000E, 0x0020),
            (0x007F, 0x00A0),
            (0x00AD, 0x00AD),
            (0x034F, 0x034F),
            (0x0600, 0x0605),
            (0x061C, 0x061C),
            (0x06DD, 0x06DD),
            (0x070F, 0x070F),
            (0x0890, 0x0891),
            (0x08E2, 0x08E2),
            (0x115F, 0x1160),
            (0x1680, 0x1680),
            (0x17B4, 0x17B5),
            (0x180B, 0x180F),
            (0x2000, 0x200F),
            (0x2028, 0x202F),
            (0x205F, 0x206F),
            (0x3000, 0x3000),
            (0x3164, 0x3164),
            (0xFE00, 0xFE0F),
            (0xFEFF, 0xFEFF),
            (0xFFA0, 0xFFA0),
            (0xFFF0, 0xFFFB),
            (0x110BD, 0x110BD),
            (0x110CD, 0x110CD),
            (0x13430, 0x13438),
            (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A),
            (0xE0000, 0xE0FFF),
        ),
        (  # triggers
            (0x0009, 0x000A),
            (0x000D, 0x000D),
            (0x002B, 0x002B),
            (0x002D, 0x002D),
            (0x003D, 0x003D),
            (0x0040, 0x0040),
            (0x207A, 0x207C),
            (0x208A, 0x208C),
            (0x2212, 0x2212),
            (0x2A75, 0x2A76),
            (0xFB29, 0xFB29),
            (0xFE62, 0xFE63),
            (0xFE66, 0xFE66),
            (0xFE6B, 0xFE6B),
            (0xFF0B, 0xFF0B),
            (0xFF0D, 0xFF0D),
            (0xFF1D, 0xFF1D),
            (0xFF20, 0xFF20),
        ),
    ),
}


def _formula_characters() -> tuple[list[int], list[int]]:
    """_formula_code_points(), from _SCANNED_RANGES where they hold this Unicode version."""
    stored = _SCANNED_RANGES.get(unicodedata.unidata_version)
    if stored is None:
        return _formula_code_points()
    skipped, triggers = (
        [cp for low, high in ranges for cp in range(low, high + 1)] for ranges in stored
    )
    return skipped, triggers


def _regex_class(code_points: list[int]) -> str:
    """A character class that Python's re and RE2 (Arrow's regex engine) read alike.

    RE2 lacks \\uXXXX escapes, and pandas falls back to slow Python matching for them:
    so ASCII as \\xHH (no raw controls or class metacharacters), the rest literally.
    """
    ranges: list[list[int]] = []
    for cp in code_points:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])

    def one(cp: int) -> str:
        return f"\\x{cp:02x}" if cp < 0x80 else chr(cp)

    return "[" + "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges) + "]"


_SKIPPED, _TRIGGERS = _formula_characters()
# A cell starts a formula when its first character that is not skipped is a trigger.
# Anchored: the engine looks no further than the first visible character.
FORMULA_PATTERN = f"^{_regex_class(_SKIPPED)}*{_regex_class(_TRIGGERS)}"

# The raw spool written by app_db.contacts.copy_terminal_contacts (format described there).
SPOOL_COLUMN_TYPES = {column: pa.string() for column in CSV_COLUMNS} | {
    "attempts_count": pa.int64()
}
# How the spool is read. Only an unquoted empty field is NULL: by default Arrow also
# reads "N/A", "NULL", "NaN", "#N/A"... as NULL, which would silently blank such answers;
# and a quoted empty field is the empty string ''.
SPOOL_CONVERT_OPTIONS = pa_csv.ConvertOptions(
    column_types=SPOOL_COLUMN_TYPES,
    null_values=[""],
    strings_can_be_null=True,
    quoted_strings_can_be_null=False,
)
# The reader's buffers grow with the block size (+100 MB peak RSS at 1 MiB): small blocks.
SPOOL_BLOCK_BYTES = 256 * 1024
# pandas formats about this much of the spool at a time: its cost per call (a Series, an
# accessor and a check for each of a dozen operations) would otherwise be paid per
# block, and was about a third of the render's CPU with one block per call.
FORMAT_BYTES = 2 * 1024 * 1024
# Groups of blocks read ahead, and written behind, of the one being formatted: enough to
# keep the stages busy, few enough that memory stays flat.
GROUPS_IN_FLIGHT = 2


@dataclass(frozen=True)
class RenderStats:
    row_count: int
    byte_count: int  # of the file on disk (compressed, with gzip): what S3 stores
    outcome_counts: dict[str, int]
    sha256: str  # hex, of the file's bytes on disk: what a download gets


class _HashingFile:
    """A binary file that hashes what is written to it, so the checksum costs no second
    read of the file."""

    def __init__(self, file: BinaryIO):
        self.file, self.hash, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        written = self.file.write(data)
        self.size += written
        return written

    @property
    def closed(self) -> bool:
        return self.file.closed

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()


def guard_formula(series: pd.Series) -> pd.Series:
    """Prefix free-text cells that a spreadsheet would run as a formula with ``'``.

    The one rule for both renderers, as Arrow-backed strings whatever the series held.
    One anchored RE2 match per cell (no Python loop), then the guard goes before the
    cells that matched: a regex replacement would match every cell a second time, with
    RE2's slower engine for submatches. NULL stays NULL.
    """
    if not isinstance(series.dtype, pd.ArrowDtype):
        series = series.astype(ARROW_STRING)
    cells = pa.array(series)  # the series' own Arrow data, not a copy
    starts = pc.match_substring_regex(cells, FORMULA_PATTERN)
    if not pc.any(starts).as_py():
        return series  # the usual case: no copy of the column
    guarded = pc.if_else(starts, pc.binary_join_element_wise(INJECTION_GUARD, cells, ""), cells)
    return pd.Series(pd.arrays.ArrowExtensionArray(guarded), index=series.index, name=series.name)


def format_spool_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The free-text CSV cells of a group of spool rows (Arrow-backed string columns)."""
    for column in FREE_TEXT_COLUMNS:
        frame[column] = guard_formula(frame[column])
    return frame


# A row longer than a block (answers can be megabytes) needs bigger blocks. Arrow's
# block_size is an int32: 1 GiB is the largest power of two it accepts.
MAX_SPOOL_BLOCK_BYTES = 1024 * 1024 * 1024
SPOOL_BLOCK_GROWTH = 8


class RowTooLongError(ValueError):
    """A spool row is longer than the largest block Arrow's CSV reader can take."""


def next_block_bytes(block_bytes: int) -> int:
    """The block size to retry with after a row straddled blocks of ``block_bytes``."""
    if block_bytes >= MAX_SPOOL_BLOCK_BYTES:
        raise RowTooLongError(
            f"a row of the export is longer than {MAX_SPOOL_BLOCK_BYTES // (1 << 30)} GiB, "
            "the largest block Arrow's CSV reader accepts; the CSV cannot be rendered"
        )
    return min(block_bytes * SPOOL_BLOCK_GROWTH, MAX_SPOOL_BLOCK_BYTES)


def render_spool(
    spool_path: Path,
    csv_path: Path,
    on_batch: Callable[[int], None] | None = None,
    *,
    bom: bool = False,
    gzip: bool = False,
    utc: bool = True,
) -> RenderStats:
    """Stream the raw spool into the export CSV, batch by batch; with `bom` the file
    starts with the UTF-8 byte-order mark, with `gzip` it is the gzip of that CSV
    (compressed as it is written: the uncompressed file never exists). `utc`: the spool's
    timestamps are in UTC (written with "Z"); else in a zone (written with its offset).
    ``on_batch(rows_so_far)`` after each batch (whatever it raises stops the rendering)."""
    if spool_path.stat().st_size == 0:  # no terminal contacts: a header-only file
        with _export_file(csv_path, bom=bom, gzip=gzip) as (_, out):
            pass
        return RenderStats(0, out.size, {}, out.hash.hexdigest())
    block_bytes = SPOOL_BLOCK_BYTES
    while True:
        try:
            return _render_spool(
                spool_path, csv_path, block_bytes, on_batch, bom=bom, gzip=gzip, utc=utc
            )
        except pa.ArrowInvalid as error:
            # Arrow cannot split a row across blocks: start again with blocks big
            # enough for the longest row. Only campaigns with huge answers pay for it.
            if "straddl" not in str(error):
                raise
        # Outside the except block, so that a RowTooLongError is the whole story (a
        # failed job shows the root cause of an error, which Arrow's message is not).
        block_bytes = next_block_bytes(block_bytes)


@contextlib.contextmanager
def _export_file(csv_path: Path, *, bom: bool, gzip: bool) -> Iterator[tuple]:
    """(where the CSV's bytes go, the hashing file on disk), the header already written.

    The hash and the size are of the bytes that land on disk (compressed, with gzip):
    exactly what is uploaded and downloaded. On exit the gzip trailer is written too.
    """
    with hashed_sink(csv_path, gzip=gzip) as (sink, out):
        # Written here so that column names stay unquoted.
        sink.write(BOM + HEADER if bom else HEADER)
        yield sink, out


@contextlib.contextmanager
def hashed_sink(path: Path, *, gzip: bool) -> Iterator[tuple]:
    """(where a file's bytes go, the hashing file on disk), for every format: with gzip
    the sink compresses (level 6, no time or name, so the same bytes give the same
    file), and the hash and size are of the bytes on disk. On exit the file is closed."""
    with open(path, "wb") as file:
        out = _HashingFile(file)
        with (
            gzip_format.GzipFile(
                filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=out, mtime=0
            )
            if gzip
            else contextlib.nullcontext(out)
        ) as sink:
            yield sink, out


def _render_spool(
    spool_path: Path,
    csv_path: Path,
    block_bytes: int,
    on_batch: Callable[[int], None] | None,
    *,
    bom: bool,
    gzip: bool,
    utc: bool,
) -> RenderStats:
    reader = open_spool(spool_path, block_bytes)
    outcomes: Counter[str] = Counter()
    rows = 0
    with _export_file(csv_path, bom=bom, gzip=gzip) as (sink, out):
        csv_tables = _CsvTableWriter(sink)
        groups = groups_of_blocks(reader, max(1, FORMAT_BYTES // block_bytes))
        # Arrow reads the next groups and writes (hashes, compresses) the previous ones
        # on threads of their own while pandas formats this one (background.py).
        with (
            contextlib.closing(read_ahead(groups, GROUPS_IN_FLIGHT)) as tables,
            WriteBehind(csv_tables.write, GROUPS_IN_FLIGHT) as write_behind,
        ):
            for table in tables:
                write_behind.put(_format_table(table, utc))
                _count_outcomes(table, outcomes)
                rows += table.num_rows
                if on_batch is not None:
                    on_batch(rows)
        csv_tables.close()
    byte_count = out.size
    release_freed_memory()
    return RenderStats(
        rows, byte_count, {str(k): int(v) for k, v in outcomes.items()}, out.hash.hexdigest()
    )


def open_spool(spool_path: Path, block_bytes: int) -> pa_csv.CSVStreamingReader:
    """The spool's rows, one Arrow batch per block (SPOOL_COLUMN_TYPES)."""
    return pa_csv.open_csv(
        spool_path,
        read_options=pa_csv.ReadOptions(column_names=list(CSV_COLUMNS), block_size=block_bytes),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=SPOOL_CONVERT_OPTIONS,
    )


def groups_of_blocks(reader: pa_csv.CSVStreamingReader, size: int) -> Iterator[pa.Table]:
    """The reader's batches (one per block), `size` at a time, as tables (no copy)."""
    batches = iter(reader)
    while group := list(itertools.islice(batches, size)):
        yield pa.Table.from_batches(group)


def iso_timestamp_cells(table: pa.Table, column: str, utc: bool) -> pa.Array:
    """A spool column's timestamps as the file writes them, each checked to read back."""
    spool = table.column(column).combine_chunks()
    cells = timestamps.iso_cells(spool, utc)
    timestamps.check_cells(spool, cells, table.column("contact_id"), column, utc)
    return cells


def _format_table(table: pa.Table, utc: bool = True) -> pa.Table:
    """Spool rows as the CSV's cells: pandas guards the free-text columns, Arrow rewrites
    the timestamps (each checked to read back as stored: timestamps.check_cells); the ids,
    the outcome and the attempts go through as Arrow read them."""
    frame = format_spool_cells(
        table.select(list(FREE_TEXT_COLUMNS)).to_pandas(types_mapper=pd.ArrowDtype)
    )
    cells = {column: pa.array(frame[column]) for column in FREE_TEXT_COLUMNS}
    for column in TIMESTAMP_COLUMNS:
        cells[column] = iso_timestamp_cells(table, column, utc)
    return pa.Table.from_arrays(
        [cells.get(column, table.column(column)) for column in CSV_COLUMNS],
        names=list(CSV_COLUMNS),
    )


def _count_outcomes(table: pa.Table, outcomes: Counter[str]) -> None:
    counts = pc.value_counts(table.column("outcome"))
    values, tallies = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    outcomes.update(dict(zip(values, tallies, strict=True)))


class _CsvTableWriter:
    """Arrow's CSV writer on the export file, made at the first table (it needs the schema)."""

    def __init__(self, sink):
        self.sink, self.writer = sink, None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pa_csv.CSVWriter(
                self.sink,
                table.schema,
                write_options=pa_csv.WriteOptions(
                    include_header=False, eol="\r\n", batch_size=16_384
                ),
            )
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def release_freed_memory() -> None:
    """Hand freed Arrow and malloc memory back to the OS, so the upload does not stack on it."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def render_rows(rows: pd.DataFrame) -> bytes:
    """The straightforward rendering of a whole DataFrame of extracted rows.

    Its timestamps are Python datetimes: years 1-9999 only, and psycopg2 hands over
    PostgreSQL's infinity as datetime.max. So it is exact for those only; render_spool
    takes every timestamp PostgreSQL can store.
    """
    frame = rows.loc[:, list(CSV_COLUMNS)].copy()
    for column in UUID_COLUMNS:
        frame[column] = frame[column].map(str)
    for column in TIMESTAMP_COLUMNS:
        frame[column] = frame[column].astype(object).map(_iso_utc_datetime)
    for column in FREE_TEXT_COLUMNS:
        frame[column] = guard_formula(frame[column].astype("string"))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue().encode("utf-8")


def _iso_utc_datetime(value) -> str | None:
    """A datetime in the file's form; naive ones (SQLite) are UTC. pd.to_datetime would
    refuse years outside 1677-2262 and strftime drop the fractional seconds."""
    if value is None or pd.isna(value):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    text = value.isoformat()
    # As render_spool writes them (PostgreSQL's text): no trailing zeros in the fraction.
    return (text.rstrip("0") if value.microsecond else text) + "Z"
