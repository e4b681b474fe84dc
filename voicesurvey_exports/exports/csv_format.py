"""The export CSV: columns, cell formatting and the formula-injection guard.

UTF-8, a header row, RFC 4180 quoting with CRLF row ends; timestamps as ISO 8601
UTC with a ``Z``; NULL as an empty field.

Two renderers produce files that parse to the same rows:
- ``render_spool`` streams: it reads the extract's raw CSV spool in small Arrow
  batches, formats each batch with pandas (Arrow-backed) and writes it with Arrow's
  CSV writer. Memory stays flat whatever the campaign size. The pipeline uses it.
- ``render_rows`` renders a whole DataFrame with ``DataFrame.to_csv``: the
  straightforward reference the streaming path is tested against.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

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
UUID_COLUMNS = ("campaign_id", "contact_id")
TIMESTAMP_COLUMNS = ("last_attempt_at", "completed_at")
# Cells that people or callers typed: the only ones that can carry a formula.
FREE_TEXT_COLUMNS = ("external_contact_id", "q1_answer", "q2_answer", "q3_answer")
# OWASP CSV injection: a spreadsheet treats a cell starting with one of these as a
# formula (LF included: some spreadsheets skip a leading newline and then see "=").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
INJECTION_GUARD = "'"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
HEADER = (",".join(CSV_COLUMNS) + "\r\n").encode("utf-8")

# The raw spool written by app_db.contacts.copy_terminal_contacts (format described there).
SPOOL_COLUMN_TYPES = {column: pa.string() for column in CSV_COLUMNS} | {
    "attempts_count": pa.int64()
}
# The reader's buffers grow with the block size (about +50 MB peak RSS at 256 KiB, +100 MB
# at 1 MiB); per-batch pandas overhead grows as blocks shrink. 512 KiB balances the two
# (benchmarks/export_benchmark.py).
SPOOL_BLOCK_BYTES = 512 * 1024


@dataclass(frozen=True)
class RenderStats:
    row_count: int
    byte_count: int
    outcome_counts: dict[str, int]


def guard_formula(series: pd.Series) -> pd.Series:
    """Prefix free-text cells that a spreadsheet would run as a formula with ``'``."""
    starts_formula = series.str.startswith(FORMULA_PREFIXES)
    if not starts_formula.any():  # the usual case: skip the copy
        return series
    return series.where(~starts_formula.fillna(False).astype(bool), INJECTION_GUARD + series)


def iso_utc_from_spool(series: pd.Series) -> pd.Series:
    """'2026-11-16 09:49:55.123+00' -> '2026-11-16T09:49:55Z' (string slicing: fast)."""
    return (series.str.slice(0, 19) + "Z").str.replace(" ", "T", n=1, regex=False)


def format_spool_batch(frame: pd.DataFrame) -> pd.DataFrame:
    """The CSV cells of one spool batch (Arrow-backed string columns)."""
    for column in TIMESTAMP_COLUMNS:
        frame[column] = iso_utc_from_spool(frame[column])
    for column in FREE_TEXT_COLUMNS:
        frame[column] = guard_formula(frame[column])
    return frame


# A row longer than a block (answers can be megabytes) needs bigger blocks.
MAX_SPOOL_BLOCK_BYTES = 512 * 1024 * 1024


def render_spool(spool_path: Path, csv_path: Path) -> RenderStats:
    """Stream the raw spool into the export CSV, batch by batch."""
    if spool_path.stat().st_size == 0:  # no terminal contacts: a header-only file
        csv_path.write_bytes(HEADER)
        return RenderStats(0, len(HEADER), {})
    block_bytes = SPOOL_BLOCK_BYTES
    while True:
        try:
            return _render_spool(spool_path, csv_path, block_bytes)
        except pa.ArrowInvalid as error:
            # Arrow cannot split a row across blocks: start again with blocks big
            # enough for the longest row. Only campaigns with huge answers pay for it.
            if "straddl" not in str(error) or block_bytes >= MAX_SPOOL_BLOCK_BYTES:
                raise
            block_bytes *= 8


def _render_spool(spool_path: Path, csv_path: Path, block_bytes: int) -> RenderStats:
    reader = pa_csv.open_csv(
        spool_path,
        read_options=pa_csv.ReadOptions(column_names=list(CSV_COLUMNS), block_size=block_bytes),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=SPOOL_COLUMN_TYPES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    outcomes: Counter[str] = Counter()
    rows = 0
    with open(csv_path, "wb") as out:
        out.write(HEADER)  # written here so that column names stay unquoted
        writer = None
        for batch in reader:
            frame = format_spool_batch(batch.to_pandas(types_mapper=pd.ArrowDtype))
            outcomes.update(frame["outcome"].value_counts().to_dict())
            rows += len(frame)
            formatted = pa.RecordBatch.from_arrays(
                [pa.array(frame[column]) for column in CSV_COLUMNS], names=list(CSV_COLUMNS)
            )
            if writer is None:
                writer = pa_csv.CSVWriter(
                    out,
                    formatted.schema,
                    write_options=pa_csv.WriteOptions(
                        include_header=False, eol="\r\n", batch_size=16_384
                    ),
                )
            writer.write_batch(formatted)
        if writer is not None:
            writer.close()
        byte_count = out.tell()
    release_freed_memory()
    return RenderStats(rows, byte_count, {str(k): int(v) for k, v in outcomes.items()})


def release_freed_memory() -> None:
    """Hand freed Arrow and malloc memory back to the OS, so the upload does not stack on it."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def render_rows(rows: pd.DataFrame) -> bytes:
    """The straightforward rendering of a whole DataFrame of extracted rows."""
    frame = rows.loc[:, list(CSV_COLUMNS)].copy()
    for column in UUID_COLUMNS:
        frame[column] = frame[column].map(str)
    for column in TIMESTAMP_COLUMNS:
        # utc=True reads naive values (SQLite) as UTC and converts aware ones (PostgreSQL).
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for column in FREE_TEXT_COLUMNS:
        frame[column] = guard_formula(frame[column].astype("string"))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue().encode("utf-8")
