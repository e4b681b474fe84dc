"""The xlsx format: one sheet, the header row, then one row per contact, in constant
memory. xlsxwriter makes the workbook's frame (the package's parts, styles and the sheet
with its header row); the contact rows are streamed into the sheet's XML a block at a
time, built with Arrow string kernels in the same form xlsxwriter writes in its
constant_memory mode (inline strings, numbers): a Python call per cell cost about 7x the
CSV's time.

- A text cell is a string cell (write_string), never a formula: it holds exactly the
  stored text, so no guard is needed. XML cannot hold most control characters, and turns
  a carriage return into a line feed: those (all of U+0000-U+001F but tab and line feed,
  and U+FFFE, U+FFFF) are written in Excel's own escape, `_xHHHH_`, as xlsxwriter writes
  them, and a stored text that looks like one has its underscore escaped (`_x000D_` is
  written `_x005F_x000D_`). Excel decodes both; openpyxl leaves that to its caller
  (openpyxl.utils.escape.unescape).
- attempts_count is a number; timestamps are the CSV's ISO 8601 text; NULL is an empty
  cell. (A spreadsheet shows an empty text and no value alike.)
- Excel's limits fail the export, naming them: 1,048,576 rows (the header and 1,048,575
  contacts), 32,767 characters (UTF-16 units) in a cell.
"""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xlsxwriter

from .arrow_bytes import escape_where_needed, string_bytes
from .background import WriteBehind, read_ahead
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


SHEET_PART = "xl/worksheets/sheet1.xml"
ROWS_END = "</sheetData>"
# Deflate's fastest level: the sheet's XML is most of the work, and compresses well anyway.
ZIP_LEVEL = 1


def _frame(path: Path) -> Path:
    """A workbook with the sheet and its header row only, made by xlsxwriter."""
    frame = path.with_name(path.name + ".frame")
    workbook = xlsxwriter.Workbook(str(frame), {"tmpdir": str(path.parent)})
    sheet = workbook.add_worksheet(SHEET_NAME)
    for column, name in enumerate(CSV_COLUMNS):
        sheet.write_string(0, column, name)
    workbook.close()
    return frame


def _render_xlsx(spool_path, path, on_batch, utc: bool, block_bytes: int) -> RenderStats:
    outcomes: Counter[str] = Counter()
    rows = 0
    frame_path = _frame(path)
    try:
        with (
            zipfile.ZipFile(frame_path) as frame,
            zipfile.ZipFile(
                path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL
            ) as workbook,
        ):
            for member in frame.infolist():
                if member.filename != SHEET_PART:
                    workbook.writestr(member, frame.read(member))
                    continue
                sheet_xml = frame.read(member).decode("utf-8")
                # The header's extent would be wrong for the rows below: dimension is optional.
                start, _, _ = sheet_xml.partition("<dimension ")
                _, _, rest = sheet_xml.partition("<dimension ")
                sheet_xml = start + rest.partition("/>")[2] if rest else sheet_xml
                head, _, tail = sheet_xml.partition(ROWS_END)
                # By name, so that the part takes the archive's compression: a bare
                # ZipInfo would be stored uncompressed (about 4x the bytes at 1,000,000).
                with (
                    workbook.open(SHEET_PART, "w", force_zip64=True) as sheet,
                    # Deflate and CRC release the GIL: they run beside the next block's XML.
                    WriteBehind(sheet.write, GROUPS_IN_FLIGHT) as behind,
                ):
                    behind.put(head.encode("utf-8"))
                    for table in _tables(spool_path, block_bytes):
                        if rows + table.num_rows > MAX_CONTACTS:
                            raise ExcelLimitExceeded(
                                f"the export has more than {MAX_CONTACTS:,} contacts: an Excel "
                                f"worksheet holds {MAX_ROWS:,} rows with the header (request "
                                "csv, jsonl or parquet, or narrow it with outcomes or dates)"
                            )
                        # (The view keeps the array's buffer alive until it is written.)
                        behind.put(string_bytes(sheet_rows(table, rows + 2, utc)))
                        _count_outcomes(table, outcomes)
                        rows += table.num_rows
                        if on_batch is not None:
                            on_batch(rows)
                    behind.put((ROWS_END + tail).encode("utf-8"))
    finally:
        frame_path.unlink(missing_ok=True)
    release_freed_memory()
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return RenderStats(
        rows, size, {str(k): int(v) for k, v in outcomes.items()}, digest.hexdigest()
    )


def _tables(spool_path: Path, block_bytes: int):
    if not spool_path.stat().st_size:
        return
    # Half the CSV's group: a row's XML is several times its spool text, and each of the
    # ten columns passes through a few string arrays (292-302 MB peak at 1,000,000 with
    # the CSV's group size).
    groups = groups_of_blocks(
        open_spool(spool_path, block_bytes), max(1, FORMAT_BYTES // 2 // block_bytes)
    )
    with contextlib.closing(read_ahead(groups, GROUPS_IN_FLIGHT)) as tables:
        yield from tables


# What XML 1.0 cannot hold, or a reader would change (CR), in Excel's _xHHHH_ escape, as
# xlsxwriter writes it; first a stored text that looks like an escape gets its "_" escaped.
_LOOKS_ESCAPED = "(_x[0-9a-fA-F]{4}_)"
_CONTROL = "[\\x00-\\x08\\x0b-\\x1f]"
_NON_CHARACTERS = ("\ufffe", "\uffff")


# Any of the above: only the values that hold one go through _excel_escaped's passes.
_EXCEL_SPECIAL = "|".join(("[&<>]", _CONTROL, "[\\x{FFFE}\\x{FFFF}]", _LOOKS_ESCAPED))


def excel_text(values: pa.Array) -> pa.Array:
    """Text as the content of an inline string's <t> element (NULL stays NULL)."""
    return escape_where_needed(values, _EXCEL_SPECIAL, _excel_escaped)


def _excel_escaped(values: pa.Array) -> pa.Array:
    text = values
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        if pc.any(pc.match_substring(text, char)).as_py():  # a scan is cheaper than a copy
            text = pc.replace_substring(text, char, entity)
    if pc.any(pc.match_substring(text, "_x")).as_py():
        text = pc.replace_substring_regex(text, _LOOKS_ESCAPED, "_x005F\\1")
    if pc.any(pc.match_substring_regex(text, _CONTROL)).as_py():
        for code in (*range(0x09), *range(0x0B, 0x20)):
            if pc.any(pc.match_substring(text, chr(code))).as_py():
                text = pc.replace_substring(text, chr(code), f"_x{code:04X}_")
    for char in _NON_CHARACTERS:
        if pc.any(pc.match_substring(text, char)).as_py():
            text = pc.replace_substring(text, char, f"_x{ord(char):04X}_")
    return text


def sheet_rows(table: pa.Table, first_row: int, utc: bool) -> pa.Array:
    """A block of spool rows as the sheet's <row> elements (never NULL); a NULL is a cell
    left out, as xlsxwriter leaves it."""
    cells = {column: table.column(column).combine_chunks() for column in CSV_COLUMNS}
    for column in TIMESTAMP_COLUMNS:
        cells[column] = iso_timestamp_cells(table, column, utc)
    _check_cell_lengths(table, cells)
    numbers = pc.cast(pa.array(np.arange(first_row, first_row + table.num_rows)), pa.string())
    pieces: list = ['<row r="', numbers, '">']
    for index, column in enumerate(CSV_COLUMNS):
        reference = chr(ord("A") + index)
        if column == "attempts_count":
            cell = pc.binary_join_element_wise(
                f'<c r="{reference}',
                numbers,
                '"><v>',
                pc.cast(cells[column], pa.string()),
                "</v></c>",
                "",
            )
        elif column in FREE_TEXT_COLUMNS:
            # An empty text as xlsxwriter writes it, "<t></t>": readers take an empty
            # element with xml:space="preserve" for no value.
            opening = pc.if_else(pc.equal(cells[column], ""), "<t>", '<t xml:space="preserve">')
            cell = pc.binary_join_element_wise(
                f'<c r="{reference}',
                numbers,
                '" t="inlineStr"><is>',
                opening,
                excel_text(cells[column]),
                "</t></is></c>",
                "",
            )
        else:
            # Ids, outcomes and ISO timestamps: never empty, nothing XML would change.
            cell = pc.binary_join_element_wise(
                f'<c r="{reference}',
                numbers,
                '" t="inlineStr"><is><t>',
                cells[column],
                "</t></is></c>",
                "",
            )
        pieces.append(pc.fill_null(cell, ""))
    pieces.append("</row>")
    return pc.binary_join_element_wise(*pieces, "")


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
