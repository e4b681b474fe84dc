"""The export file in each format a request may ask for: csv (csv_format.py), JSON Lines,
Parquet and xlsx. The same rows, in the same order, with the same ten columns.

Each streams the extract's spool in Arrow blocks, as the CSV does, so memory stays flat
whatever the campaign size (docs/export-file.md, "Formats and options"):
- jsonl: one JSON object per line, keys in the contract's order, null for NULL,
  attempts_count a number, timestamps as the CSV writes them, text exactly as stored
  (JSON is never run: no formula guard). Built with Arrow string kernels, a block at a
  time; `bom` and `gzip` wrap it as they wrap the CSV.
- parquet: ids and text as strings, attempts_count int64, timestamps
  timestamp[us, tz=<the request's zone>] (UTC by default): instants, whatever the zone;
  zstd inside, one row group per block group. A value Parquet cannot hold (±infinity,
  beyond year 294246) fails the export naming the contact and the column.
- xlsx: see xlsx_format.py.
"""

from __future__ import annotations

import calendar
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import timestamps
from .arrow_bytes import escape_where_needed, string_bytes
from .background import WriteBehind, read_ahead
from .csv_format import (
    BOM,
    COLUMN_TYPES,
    CSV_COLUMNS,
    FORMAT_BYTES,
    FREE_TEXT_COLUMNS,
    GROUPS_IN_FLIGHT,
    SPOOL_BLOCK_BYTES,
    TIMESTAMP_COLUMNS,
    RenderStats,
    _count_outcomes,
    groups_of_blocks,
    hashed_sink,
    iso_timestamp_cells,
    next_block_bytes,
    open_spool,
    release_freed_memory,
    render_spool,
)

# What each format's file starts with (the header check): the first key of the first
# line, and the Parquet and zip (xlsx) magic bytes.
FILE_STARTS = {"jsonl": b'{"campaign_id":', "parquet": b"PAR1", "xlsx": b"PK\x03\x04"}
PARQUET_COMPRESSION = "zstd"


class UnrepresentableValue(ValueError):
    """A stored value the requested format cannot hold."""


def column_types(file_format: str, time_zone: str = "UTC") -> dict[str, str]:
    """Each column's type as the format holds it."""
    if file_format == "parquet":
        arrow = {"attempts_count": "int64"} | {
            name: f"timestamp[us, tz={time_zone}]" for name in TIMESTAMP_COLUMNS
        }
        return {name: arrow.get(name, "string") for name in CSV_COLUMNS}
    if file_format == "jsonl":
        kinds = {"uuid": "string (uuid)", "text": "string", "integer": "number"}
        return {name: kinds.get(kind, "string (ISO 8601)") for name, kind in COLUMN_TYPES.items()}
    if file_format == "xlsx":
        return {
            name: "number" if kind == "integer" else "text" for name, kind in COLUMN_TYPES.items()
        }
    return dict(COLUMN_TYPES)


def render_spool_as(
    file_format: str,
    spool_path: Path,
    path: Path,
    on_batch: Callable[[int], None] | None = None,
    *,
    bom: bool = False,
    gzip: bool = False,
    time_zone: str = "UTC",
) -> RenderStats:
    """The spool as the export file in `file_format`. The spool's timestamps are in
    `time_zone` for the text formats, in UTC for Parquet (export_steps picks)."""
    utc = time_zone == "UTC"
    if file_format == "csv":
        return render_spool(spool_path, path, on_batch, bom=bom, gzip=gzip, utc=utc)
    if file_format == "jsonl":
        return _render(
            spool_path, path, on_batch, lambda sink: JsonLinesWriter(sink, bom, utc), gzip=gzip
        )
    if file_format == "parquet":
        return _render(spool_path, path, on_batch, lambda sink: ParquetFileWriter(sink, time_zone))
    if file_format == "xlsx":
        from .xlsx_format import render_xlsx

        return render_xlsx(spool_path, path, on_batch, utc=utc)
    raise ValueError(f"format {file_format!r} is not one of csv, jsonl, parquet, xlsx")


def _render(
    spool_path: Path,
    path: Path,
    on_batch: Callable[[int], None] | None,
    make_writer: Callable,
    *,
    gzip: bool = False,
) -> RenderStats:
    block_bytes = SPOOL_BLOCK_BYTES
    while True:
        try:
            return _render_blocks(spool_path, path, on_batch, make_writer, block_bytes, gzip)
        except pa.ArrowInvalid as error:
            # A row longer than a block: again with bigger blocks (csv_format does the same).
            if "straddl" not in str(error):
                raise
        block_bytes = next_block_bytes(block_bytes)


def _render_blocks(
    spool_path: Path,
    path: Path,
    on_batch: Callable[[int], None] | None,
    make_writer: Callable,
    block_bytes: int,
    gzip: bool,
) -> RenderStats:
    outcomes: Counter[str] = Counter()
    rows = 0
    with hashed_sink(path, gzip=gzip) as (sink, out):
        writer = make_writer(sink)
        try:
            if spool_path.stat().st_size:
                groups = groups_of_blocks(
                    open_spool(spool_path, block_bytes), max(1, FORMAT_BYTES // block_bytes)
                )
                # The writes (hashing, gzip, Parquet's encoding) run beside the next
                # block's formatting, as the CSV's do.
                with (
                    contextlib.closing(read_ahead(groups, GROUPS_IN_FLIGHT)) as tables,
                    WriteBehind(writer.write, GROUPS_IN_FLIGHT) as behind,
                ):
                    for table in tables:
                        behind.put(writer.prepare(table))
                        _count_outcomes(table, outcomes)
                        rows += table.num_rows
                        if on_batch is not None:
                            on_batch(rows)
        finally:
            # Also on failure, while the file is open (the failed file is discarded).
            writer.close()
    release_freed_memory()
    return RenderStats(
        rows, out.size, {str(k): int(v) for k, v in outcomes.items()}, out.hash.hexdigest()
    )


# JSON Lines --------------------------------------------------------------------------

# What JSON escapes: the backslash, the double quote and the control characters (with
# the short escapes where JSON has one, else as \u00XX).
_JSON_SPECIAL = '[\\x00-\\x1f"\\\\]'
_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def json_strings(values: pa.Array) -> pa.Array:
    """Each value as a JSON string literal ("..." with \\, " and control characters
    escaped); NULL stays NULL."""
    escaped = escape_where_needed(values, _JSON_SPECIAL, _json_escaped)
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _json_escaped(values: pa.Array) -> pa.Array:
    escaped = values
    for char, escape in (("\\", "\\\\"), ('"', '\\"')):
        escaped = pc.replace_substring(escaped, char, escape)
    for code in range(0x20):
        char = chr(code)
        if pc.any(pc.match_substring(escaped, char)).as_py():  # a scan is cheaper than a copy
            escape = _SHORT_ESCAPES.get(char, f"\\u{code:04x}")
            escaped = pc.replace_substring(escaped, char, escape)
    return escaped


def json_lines(table: pa.Table, utc: bool = True) -> pa.Array:
    """A block of spool rows as JSON Lines, each line ending "\\n" (never NULL)."""
    pieces: list = []
    for index, column in enumerate(CSV_COLUMNS):
        values = table.column(column).combine_chunks()
        if column == "attempts_count":
            cells = pc.cast(values, pa.string())
        elif column in FREE_TEXT_COLUMNS:
            cells = json_strings(values)
        else:
            # Ids, outcomes and ISO timestamps hold nothing JSON escapes: quoted as they are.
            if column in TIMESTAMP_COLUMNS:
                values = iso_timestamp_cells(table, column, utc)
            cells = pc.binary_join_element_wise('"', values, '"', "")
        pieces += [
            ("{" if index == 0 else ",") + json.dumps(column) + ":",
            pc.fill_null(cells, "null"),
        ]
    pieces.append("}\n")
    return pc.binary_join_element_wise(*pieces, "")


class JsonLinesWriter:
    def __init__(self, sink, bom: bool, utc: bool):
        self.sink, self.utc = sink, utc
        if bom:
            sink.write(BOM)

    def prepare(self, table: pa.Table) -> memoryview:
        """The block's bytes (on the formatting thread)."""
        return string_bytes(json_lines(table, self.utc)) if table.num_rows else memoryview(b"")

    def write(self, data: memoryview) -> None:
        self.sink.write(data)

    def close(self) -> None:
        pass


# Parquet ------------------------------------------------------------------------------


def parquet_schema(time_zone: str = "UTC") -> pa.Schema:
    types = {"attempts_count": pa.int64()} | {
        name: pa.timestamp("us", tz=time_zone) for name in TIMESTAMP_COLUMNS
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in CSV_COLUMNS])


_EPOCH_DAYS = 719_162  # days from 0001-01-01 to 1970-01-01 (proleptic Gregorian)
_MAX_MICROSECONDS = 2**63 - 1


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (astronomical years)."""
    year_before = year - 1
    days = year_before * 365 + year_before // 4 - year_before // 100 + year_before // 400
    days += sum(calendar.mdays[1:month]) + (1 if month > 2 and calendar.isleap(year) else 0)
    return days + day - 1 - _EPOCH_DAYS


def epoch_microseconds(fields: timestamps.Fields) -> int:
    year, month, day, hour, minute, second, microsecond, offset = fields
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return (seconds - offset) * 1_000_000 + microsecond


def parquet_timestamps(table: pa.Table, column: str, time_zone: str) -> pa.Array:
    """A spool column (UTC text) as timestamp[us, tz=time_zone]: Arrow parses the usual
    cells; the others (BC, years past 9999) are computed here; ±infinity and instants
    past int64 microseconds fail naming the contact and the column."""
    spool = table.column(column).combine_chunks()
    usual = pc.fill_null(timestamps.usual_spool_cells(spool), True)
    utc_type = pa.timestamp("us", tz="UTC")
    parsed = pc.cast(pc.if_else(usual, spool, pa.scalar(None, pa.string())), utc_type)
    unusual = pc.invert(usual)
    if pc.any(unusual).as_py():
        indices = pc.indices_nonzero(unusual).to_pylist()
        values = []
        for index, text in zip(indices, pc.filter(spool, unusual).to_pylist(), strict=True):
            contact = table.column("contact_id")[index].as_py()
            if text in timestamps.INFINITIES:
                raise UnrepresentableValue(
                    f"contact {contact}: {column} is {text}, which Parquet cannot hold "
                    "(request the csv or jsonl format, which write it as the word)"
                )
            micros = epoch_microseconds(timestamps.spool_fields(text))
            if not -_MAX_MICROSECONDS <= micros <= _MAX_MICROSECONDS:
                raise UnrepresentableValue(
                    f"contact {contact}: {column} {text!r} is outside Parquet's microsecond "
                    "timestamps (about 290,000 years either side of 1970)"
                )
            values.append(micros)
        parsed = pc.replace_with_mask(parsed, unusual, pa.array(values, utc_type))
    return parsed.cast(pa.timestamp("us", tz=time_zone))


class ParquetFileWriter:
    """One row group per group of spool blocks (a few MB of rows): flat memory."""

    def __init__(self, sink, time_zone: str):
        self.time_zone = time_zone
        self.schema = parquet_schema(time_zone)
        self.writer = pq.ParquetWriter(sink, self.schema, compression=PARQUET_COMPRESSION)

    def prepare(self, table: pa.Table) -> pa.Table:
        """The block as the file's columns (on the formatting thread: it may fail, naming
        the contact)."""
        columns = []
        for field in self.schema:
            if field.name in TIMESTAMP_COLUMNS:
                columns.append(parquet_timestamps(table, field.name, self.time_zone))
            else:
                columns.append(table.column(field.name).cast(field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
