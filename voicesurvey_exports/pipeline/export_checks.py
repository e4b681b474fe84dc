"""Asset checks on every exported file, evaluated right after its upload and before its
export job completes: a file goes to people outside, so it must hold what the database
held, under the column contract, stored whole.

They are blocking: in a run of one campaign a failing check fails the step with the
check's reason, so the job ends `failed` with that reason and its file is deleted; in a
backfill run of several campaigns it fails that campaign's job only (campaign_batch).
Each evaluation is recorded on its campaign's partition (the asset's Checks tab).
"""

from __future__ import annotations

import warnings
import zlib

import dagster as dg

from ..export_file.csv_format import BOM, HEADER
from ..export_file.file_formats import FILE_STARTS
from .partitions import campaigns_partitions

ASSET_KEY = dg.AssetKey("campaign_export")
ROWS = "row_count_matches_database"
HEADER_CHECK = "header_is_column_contract"
SIZE = "stored_size_matches_written"
DESCRIPTIONS = {
    ROWS: "The file has one row per terminal contact the database returned at extraction.",
    HEADER_CHECK: "The stored file starts with the ten-column header of the column contract "
    "(after the byte-order mark when the request asked for one; gunzipped, for gzip); a "
    "JSON Lines file with its first key, a Parquet or xlsx file with its format's magic "
    "bytes.",
    SIZE: "The stored object's size equals the bytes written to the file.",
}

with warnings.catch_warnings():
    # Partitioned checks are a preview in Dagster 1.13; they are what puts each
    # campaign's evaluation on its partition.
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECK_SPECS = [
        dg.AssetCheckSpec(
            name,
            asset=ASSET_KEY,
            description=description,
            blocking=True,
            partitions_def=campaigns_partitions,
        )
        for name, description in DESCRIPTIONS.items()
    ]


# How much of a gzip object is read for the header check: its compressed start. The
# header comes out of the first few hundred bytes; deflate needs no whole block for it.
GZIP_START_BYTES = 4096


def expected_start(bom: bool, file_format: str = "csv", empty: bool = False) -> bytes:
    """What the file must start with: the CSV's header, behind the BOM when one was asked
    for; the other formats' own start (an empty JSON Lines file: the BOM or nothing)."""
    start = HEADER if file_format == "csv" else FILE_STARTS[file_format]
    if file_format == "jsonl" and empty:
        start = b""
    return BOM + start if bom else start


def stored_start_bytes(*, bom: bool, gzip: bool, file_format: str = "csv") -> int:
    """How many of the stored object's first bytes evaluate needs."""
    return GZIP_START_BYTES if gzip else len(expected_start(bom, file_format))


def csv_start(stored_start: bytes, *, length: int, gzip: bool) -> bytes:
    """The CSV's first `length` bytes: the stored ones, or what the start of a gzip
    object decompresses to (wbits=31: a gzip member; partial input is fine)."""
    if not gzip:
        return stored_start[:length]
    try:
        return zlib.decompressobj(wbits=31).decompress(stored_start, length)
    except zlib.error:
        return b""  # not gzip at all: it does not start with the header either


def evaluate(
    *,
    partition_key: str,
    database_rows: int,
    file_rows: int,
    written_bytes: int,
    stored_bytes: int,
    stored_start: bytes,
    blocking: bool,
    bom: bool = False,
    gzip: bool = False,
    file_format: str = "csv",
) -> list[dg.AssetCheckEvaluation]:
    """The three checks' evaluations for one campaign's stored file. `stored_start` is
    the object's first stored_start_bytes(bom=, gzip=) bytes; `written_bytes` and
    `stored_bytes` count stored (compressed, for gzip) bytes."""
    expected = expected_start(bom, file_format, empty=file_rows == 0)
    header_passed = csv_start(stored_start, length=len(expected), gzip=gzip) == expected
    where = "the stored file, gunzipped," if gzip else "the stored file"
    results = [
        (
            ROWS,
            file_rows == database_rows,
            f"the file has {file_rows} rows, the database returned {database_rows}",
            {"file_rows": file_rows, "database_rows": database_rows},
        ),
        (
            HEADER_CHECK,
            header_passed,
            # Not what it starts with instead: that may be a row of contact data.
            f"{where} does not start with "
            + ("the byte-order mark and " if bom else "")
            + (
                "the column contract's header" if file_format == "csv" else f"a {file_format} start"
            ),
            {
                "expected_header": HEADER.decode().strip(),
                "expected_start": repr(expected),
                "byte_order_mark": bom,
            },
        ),
        (
            SIZE,
            stored_bytes == written_bytes,
            f"the stored object has {stored_bytes} bytes, {written_bytes} were written",
            {"stored_bytes": stored_bytes, "written_bytes": written_bytes},
        ),
    ]
    return [
        dg.AssetCheckEvaluation(
            asset_key=ASSET_KEY,
            check_name=name,
            passed=passed,
            metadata=metadata,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if passed else failure,
            blocking=blocking,
            partition=partition_key,
        )
        for name, passed, failure, metadata in results
    ]


def failure_reason(evaluations: list[dg.AssetCheckEvaluation]) -> str | None:
    """The export job's error message when a check failed: the first one's reason."""
    failed = [evaluation for evaluation in evaluations if not evaluation.passed]
    if not failed:
        return None
    return f"check {failed[0].check_name} failed: {failed[0].description}"
