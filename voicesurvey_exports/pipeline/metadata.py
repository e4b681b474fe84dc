"""What Dagster shows for each exported campaign: Dagster's standard metadata keys (the
UI and catalog understand them), the campaign's name, counts; never rows, never a link."""

from __future__ import annotations

import dagster as dg

from ..export_file.csv_format import COLUMN_TYPES

COLUMN_DESCRIPTIONS = {
    "outcome": "the contact's terminal state: completed, refused or excluded",
    "last_attempt_at": "UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)",
    "completed_at": "UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)",
}
COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(name, kind, description=COLUMN_DESCRIPTIONS.get(name))
        for name, kind in COLUMN_TYPES.items()
    ]
)


def readable_size(byte_count: int) -> str:
    size, unit = float(byte_count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{byte_count} B" if unit == "B" else f"{size:.1f} {unit}"


def partition_metadata(
    *,
    campaign_name: str,
    uri: str,
    row_count: int,
    byte_count: int,
    outcome_counts: dict[str, int],
    export_job_id: str,
    url_expires_at: str,
    bom: bool = False,
    compression: str = "none",
) -> dict[str, object]:
    return {
        "campaign": dg.MetadataValue.text(campaign_name),
        "dagster/uri": dg.MetadataValue.text(uri),
        "dagster/partition_row_count": dg.MetadataValue.int(row_count),
        "dagster/column_schema": COLUMN_SCHEMA,
        "size": dg.MetadataValue.text(readable_size(byte_count)),
        "size_bytes": dg.MetadataValue.int(byte_count),  # as stored: compressed, for gzip
        # The request's file options: what a download of this file gets.
        "compression": dg.MetadataValue.text(compression),
        "bom": dg.MetadataValue.bool(bom),
        **{f"outcome/{state}": dg.MetadataValue.int(n) for state, n in outcome_counts.items()},
        "export_job_id": dg.MetadataValue.text(export_job_id),
        "url_expires_at": dg.MetadataValue.text(url_expires_at),
    }
