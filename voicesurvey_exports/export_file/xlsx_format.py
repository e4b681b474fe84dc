"""The xlsx format: one sheet, the header row, then one row per contact, written with
xlsxwriter in constant memory (each row goes to disk as it is written).

- A text cell is a string cell (write_string), never a formula: it holds exactly the
  stored text, so no guard is needed. XML cannot hold most control characters, and turns
  a carriage return into a line feed: xlsxwriter writes those (all of U+0000-U+001F but
  tab and line feed, and U+FFFE, U+FFFF) in Excel's own escape, `_xHHHH_`, and escapes a
  stored text that looks like one (`_x000D_` is written `_x005F_x000D_`), so Excel,
  openpyxl and pandas read back the stored text.
- attempts_count is a number; timestamps are the CSV's ISO 8601 text; NULL is an empty
  cell. (A spreadsheet shows an empty text and no value alike.)
- Excel's limits fail the export, naming them: 1,048,576 rows (the header and 1,048,575
  contacts), 32,767 characters (UTF-16 units) in a cell.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import xlsxwriter

from .background import read_ahead
from .csv_format import (
    CSV_COLUMNS,
    FORMAT_BYTES,
    FREE_TEXT_COLUMNS,
    GROUPS_IN_FLIGHT,
    SPOOL_BLOCK_BYTES,
    TIMESTAMP_COLUMNS,
    RenderStats,
    _count_outcomes,
    groups_of_blocks,
    iso_timestamp_cells,
    next_block_bytes,
    open_spool,
    release_freed_memory,
)

# Excel's worksheet and cell limits.
MAX_ROWS = 1_048_576
MAX_CONTACTS = MAX_ROWS - 1  # below the header row
MAX_CELL_CHARACTERS = 32_767
SHEET_NAME = "contacts"
_ASTRAL = "[\\x{10000}-\\x{10FFFF}]"  # two UTF-16 units each


class ExcelLimitExceeded(ValueError):
    """The export does not fit in an Excel worksheet."""


def render_xlsx(
    spool_path: Path,
    path: Path,
    on_batch: Callable[[int], None] | None = None,
    *,
    utc: bool = True,
) -> RenderStats:
    block_bytes = SPOOL_BLOCK_BYTES
    while True:
        try:
            return _render_xlsx(spool_path, path, on_batch, utc, block_bytes)
        except pa.ArrowInvalid as error:
            if "straddl" not in str(error):
                raise
        block_bytes = next_block_bytes(block_bytes)


def _render_xlsx(spool_path, path, on_batch, utc: bool, block_bytes: int) -> RenderStats:
    outcomes: Counter[str] = Counter()
    rows = 0
    workbook = xlsxwriter.Workbook(
        str(path),
        {
            "constant_memory": True,
            # Its row files hold contact data: in the run's private spool folder.
            "tmpdir": str(path.parent),
            "strings_to_numbers": False,
            "strings_to_formulas": False,
            "strings_to_urls": False,
        },
    )
    try:
        sheet = workbook.add_worksheet(SHEET_NAME)
        for column, name in enumerate(CSV_COLUMNS):
            sheet.write_string(0, column, name)
        if spool_path.stat().st_size:
            groups = groups_of_blocks(
                open_spool(spool_path, block_bytes), max(1, FORMAT_BYTES // block_bytes)
            )
            with contextlib.closing(read_ahead(groups, GROUPS_IN_FLIGHT)) as tables:
                for table in tables:
                    if rows + table.num_rows > MAX_CONTACTS:
                        raise ExcelLimitExceeded(
                            f"the export has more than {MAX_CONTACTS:,} contacts: an Excel "
                            f"worksheet holds {MAX_ROWS:,} rows with the header (request "
                            "csv, jsonl or parquet, or narrow it with outcomes or dates)"
                        )
                    _write_rows(sheet, table, rows + 1, utc)
                    _count_outcomes(table, outcomes)
                    rows += table.num_rows
                    if on_batch is not None:
                        on_batch(rows)
    finally:
        workbook.close()
    release_freed_memory()
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return RenderStats(
        rows, size, {str(k): int(v) for k, v in outcomes.items()}, digest.hexdigest()
    )


def _check_cell_lengths(table: pa.Table, cells: dict[str, pa.Array]) -> None:
    for column in FREE_TEXT_COLUMNS:
        values = cells[column]
        units = pc.add(pc.utf8_length(values), pc.count_substring_regex(values, _ASTRAL))
        too_long = pc.fill_null(pc.greater(units, MAX_CELL_CHARACTERS), False)
        if pc.any(too_long).as_py():
            index = pc.indices_nonzero(too_long)[0].as_py()
            raise ExcelLimitExceeded(
                f"contact {table.column('contact_id')[index].as_py()}: {column} has "
                f"{units[index].as_py():,} characters, more than the {MAX_CELL_CHARACTERS:,} "
                "an Excel cell holds (request csv, jsonl or parquet)"
            )


def _write_rows(sheet, table: pa.Table, first_row: int, utc: bool) -> None:
    cells = {column: table.column(column).combine_chunks() for column in CSV_COLUMNS}
    for column in TIMESTAMP_COLUMNS:
        cells[column] = iso_timestamp_cells(table, column, utc)
    _check_cell_lengths(table, cells)
    columns = [cells[column].to_pylist() for column in CSV_COLUMNS]
    number_column = CSV_COLUMNS.index("attempts_count")
    write_string, write_number = sheet.write_string, sheet.write_number
    for row, values in enumerate(zip(*columns, strict=True), start=first_row):
        for column, value in enumerate(values):
            if value is None:
                continue
            if column == number_column:
                write_number(row, column, value)
            else:
                write_string(row, column, value)
