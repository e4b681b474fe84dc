from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from voicesurvey_exports.pipeline.retention import export_retention_job, export_retention_schedule
from voicesurvey_exports.service.requests import InvalidRequest

from .conftest import TEST_BUCKET, request_api
from .dagster_harness import export_resources


def completed_job(app_data, s3_client, days_ago: float):
    done = datetime.now(UTC) - timedelta(days=days_ago)
    job = app_data.completed_export(
        None,
        app_data.user(),
        s3_client=s3_client,
        download_url="https://link",
        url_expires_at=done + timedelta(hours=1),
        total_records=0,
        completed_at=done,
    )
    return job, app_data.job_row(job)["s3_key"]


def test_files_past_retention_are_deleted_and_their_links_cleared(
    database_url, app_data, s3_client
):
    old, old_key = completed_job(app_data, s3_client, days_ago=31)
    recent, recent_key = completed_job(app_data, s3_client, days_ago=29)

    result = export_retention_job.execute_in_process(resources=export_resources(database_url))

    assert result.success and result.output_for_node("delete_expired_exports") == 1
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])}
    assert keys == {recent_key}
    expired = app_data.job_row(old)
    assert (expired["status"], expired["s3_key"], expired["download_url"]) == (
        "completed",
        None,
        None,
    )
    assert expired["error_message"].startswith("the file was deleted after 30 days")
    assert app_data.job_row(recent)["download_url"] == "https://link"

    api = request_api(app_data.engine, s3_client)
    with pytest.raises(InvalidRequest, match="has no file: the file was deleted after 30 days"):
        api.refresh_download_url(old, app_data.user("admin"))


def test_retention_runs_daily_by_default():
    assert export_retention_schedule.cron_schedule == "15 3 * * *"
    assert export_retention_schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_retention_clears_the_link_before_the_file_goes_and_restores_it_if_s3_refuses(
    database_url, app_data, s3_client
):
    job, key = completed_job(app_data, s3_client, days_ago=31)
    resources = export_resources(database_url, bucket="no-such-bucket")

    result = export_retention_job.execute_in_process(resources=resources, raise_on_error=False)

    assert not result.success  # S3 refused: the file is still there, and so is its key
    row = app_data.job_row(job)
    assert (row["status"], row["s3_key"], row["error_message"]) == ("completed", key, None)
