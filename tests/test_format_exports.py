"""A requested export in each format, with filters and a time zone, through the
campaign_export asset in process: the key, Content-Type and download name end in the
format's extension, the file holds the filtered rows, the job's count, the checks and the
materialisation follow the options."""

from __future__ import annotations

import gzip
from datetime import datetime

import dagster as dg
import pytest
from sqlalchemy import DateTime, cast, literal

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.pipeline.assets import campaign_export

from .conftest import AppData
from .dagster_harness import materialize_export, run_failure_sensor
from .test_export_asset import link_names_and_type, stored_object
from .test_file_formats import read_rows

ROME_WEEK = {
    "outcomes": "refused,excluded",
    "attempted_from": datetime.fromisoformat("2026-11-09T00:00:00+01:00"),
    "attempted_to": datetime.fromisoformat("2026-11-16T00:00:00+01:00"),
    "time_zone": "Europe/Rome",
}

# format, compression -> (key ending, Content-Type)
CASES = {
    ("csv", "none"): (".csv", "text/csv; charset=utf-8"),
    ("jsonl", "none"): (".jsonl", "application/x-ndjson"),
    ("jsonl", "gzip"): (".jsonl.gz", "application/gzip"),
    ("parquet", "none"): (".parquet", "application/vnd.apache.parquet"),
    ("xlsx", "none"): (
        ".xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.mark.parametrize(("file_format", "compression"), list(CASES))
def test_an_export_in_each_format_holds_the_filtered_rows_in_the_zone(
    instance, postgres_url, s3_client, tmp_path, file_format, compression
):
    app = AppData(get_engine(postgres_url))
    campaign = app.campaign("Rifiuti di novembre")
    refused = app.contact(
        campaign, "refused", last_attempt_at=datetime.fromisoformat("2026-11-10T09:30:00Z")
    )
    app.contact(campaign, "refused", last_attempt_at=datetime.fromisoformat("2026-11-20T09:30Z"))
    app.contact(campaign, "completed", last_attempt_at=datetime.fromisoformat("2026-11-10T09:30Z"))
    app.contact(campaign, "excluded", last_attempt_at=None)
    job_id = app.export_job(
        campaign, app.user(), format=file_format, compression=compression, **ROME_WEEK
    )

    result = materialize_export(instance, postgres_url, campaign, job_id)

    assert result.success
    job = app.job_row(job_id)
    assert (job["status"], job["total_records"]) == ("completed", 1), job["error_message"]
    ending, content_type = CASES[(file_format, compression)]
    assert job["s3_key"].endswith(f"/{result.run_id}{ending}")
    body, stored = stored_object(s3_client, job)
    assert stored["ContentType"] == content_type
    day = job["created_at"].date().isoformat()
    assert link_names_and_type(job["download_url"]) == (
        f"Rifiuti-di-novembre-{day}{ending}",
        f"Rifiuti di novembre {day}{ending}",
        content_type,
    )
    path = tmp_path / f"export{ending}"
    path.write_bytes(gzip.decompress(body) if compression == "gzip" else body)
    [row] = read_rows(file_format, path)
    assert row["contact_id"] == str(refused)
    if file_format == "parquet":  # an instant (microseconds since 1970)
        assert row["last_attempt_at"] == 1_794_303_000_000_000
    else:
        assert row["last_attempt_at"] == "2026-11-10T10:30:00+01:00"

    materialization = instance.get_latest_materialization_event(campaign_export.key)
    metadata = materialization.asset_materialization.metadata
    assert metadata["dagster/partition_row_count"].value == 1
    assert {name: metadata[name].value for name in ("format", "outcomes", "time_zone")} == {
        "format": file_format,
        "outcomes": "refused,excluded",
        "time_zone": "Europe/Rome",
    }
    assert metadata["attempted_from"].value == "2026-11-08T23:00:00Z"
    schema = {
        column.name: column.type for column in metadata["dagster/column_schema"].schema.columns
    }
    if file_format == "parquet":
        assert schema["last_attempt_at"] == "timestamp[us, tz=Europe/Rome]"
    # (The blocking checks passed: the job completed.)


def test_a_parquet_export_of_infinity_fails_the_job_naming_contact_and_column(
    instance, postgres_url, s3_client
):
    app = AppData(get_engine(postgres_url))
    campaign = app.campaign()
    contact = app.contact(
        campaign, "refused", last_attempt_at=cast(literal("infinity"), DateTime(timezone=True))
    )
    job_id = app.export_job(campaign, app.user(), format="parquet")

    result = materialize_export(instance, postgres_url, campaign, job_id)
    assert not result.success
    run_failure_sensor(instance, result, postgres_url)

    job = app.job_row(job_id)
    assert (job["status"], job["s3_key"], job["download_url"]) == ("failed", None, None)
    assert job["error_message"].startswith(
        f"render_csv failed: UnrepresentableValue: contact {contact}: last_attempt_at is "
        "infinity, which Parquet cannot hold"
    )
