"""What Dagster shows for each exported campaign: Dagster's standard metadata keys (the
UI and catalog understand them), the campaign's name, counts; never rows, never a link."""

from __future__ import annotations

import dagster as dg

from ..app_db.schema import TERMINAL_CONTACT_STATES
from ..export_file.csv_format import COLUMN_TYPES, TIMESTAMP_COLUMNS
from ..export_file.file_formats import column_types

COLUMN_DESCRIPTIONS = {
    "outcome": "the contact's terminal state: " + ", ".join(TERMINAL_CONTACT_STATES),
    "last_attempt_at": "UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)",
    "completed_at": "UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)",
}
COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(name, kind, description=COLUMN_DESCRIPTIONS.get(name))
        for name, kind in COLUMN_TYPES.items()
    ]
)


def column_schema(file_format: str, time_zone: str = "UTC") -> dg.TableSchema:
    """The columns as this file's format holds them (the asset's own schema is the CSV's)."""

    def description(name: str) -> str | None:
        if name not in TIMESTAMP_COLUMNS:
            return COLUMN_DESCRIPTIONS.get(name)
        if file_format == "parquet":
            return f"an instant; readers show it in {time_zone}"
        if time_zone == "UTC":
            return COLUMN_DESCRIPTIONS[name]
        return f"{time_zone}, ISO 8601 with its offset (YYYY-MM-DDTHH:MM:SS+HH:MM)"

    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind, description=description(name))
            for name, kind in column_types(file_format, time_zone).items()
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
    options: dict | None = None,
) -> dict[str, object]:
    options = options or {"format": "csv", "compression": "none", "bom": False}
    file_format = options.get("format", "csv")
    return {
        "campaign": dg.MetadataValue.text(campaign_name),
        "dagster/uri": dg.MetadataValue.text(uri),
        "dagster/partition_row_count": dg.MetadataValue.int(row_count),
        "dagster/column_schema": column_schema(file_format, options.get("time_zone", "UTC")),
        "size": dg.MetadataValue.text(readable_size(byte_count)),
        "size_bytes": dg.MetadataValue.int(byte_count),  # as stored: compressed, for gzip
        # The request's options: what a download of this file gets and holds.
        **{
            name: (
                dg.MetadataValue.bool(value)
                if isinstance(value, bool)
                else dg.MetadataValue.text("unbounded" if value is None else str(value))
            )
            for name, value in options.items()
        },
        **{f"outcome/{state}": dg.MetadataValue.int(n) for state, n in outcome_counts.items()},
        "export_job_id": dg.MetadataValue.text(export_job_id),
        "url_expires_at": dg.MetadataValue.text(url_expires_at),
    }
