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

import dagster as dg

from ..export_file.csv_format import HEADER
from .partitions import campaigns_partitions

ASSET_KEY = dg.AssetKey("campaign_export")
ROWS = "row_count_matches_database"
HEADER_CHECK = "header_is_column_contract"
SIZE = "stored_size_matches_written"
DESCRIPTIONS = {
    ROWS: "The file has one row per terminal contact the database returned at extraction.",
    HEADER_CHECK: "The stored file starts with the ten-column header of the column contract.",
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


def evaluate(
    *,
    partition_key: str,
    database_rows: int,
    file_rows: int,
    written_bytes: int,
    stored_bytes: int,
    stored_start: bytes,
    blocking: bool,
) -> list[dg.AssetCheckEvaluation]:
    """The three checks' evaluations for one campaign's stored file. `stored_start` is
    the object's first len(HEADER) bytes."""
    results = [
        (
            ROWS,
            file_rows == database_rows,
            f"the file has {file_rows} rows, the database returned {database_rows}",
            {"file_rows": file_rows, "database_rows": database_rows},
        ),
        (
            HEADER_CHECK,
            stored_start == HEADER,
            # Not what it starts with instead: that may be a row of contact data.
            "the stored file does not start with the column contract's header",
            {"expected_header": HEADER.decode().strip()},
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
