from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from voicesurvey_exports.pipeline.export_checks import ASSET_KEY
from voicesurvey_exports.pipeline.partitions import campaigns_partitions
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


def test_a_deleted_file_is_recorded_on_its_campaigns_partition(database_url, app_data, s3_client):
    campaign = app_data.campaign()
    old = app_data.completed_export(
        campaign,
        s3_client=s3_client,
        completed_at=datetime.now(UTC) - timedelta(days=31),
    )
    old_key = app_data.job_row(old)["s3_key"]
    other_campaign = app_data.campaign()
    app_data.completed_export(
        other_campaign, s3_client=s3_client, completed_at=datetime.now(UTC) - timedelta(days=40)
    )
    app_data.completed_export(  # a newer export of the other campaign keeps its file
        other_campaign, s3_client=s3_client, completed_at=datetime.now(UTC) - timedelta(days=1)
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(
            campaigns_partitions.name, [str(campaign), str(other_campaign)]
        )

        result = export_retention_job.execute_in_process(
            instance=instance, resources=export_resources(database_url)
        )

        assert result.success
        observations = {
            event.partition: event
            for event in (
                record.asset_observation
                for record in instance.fetch_observations(ASSET_KEY, limit=10).records
            )
        }
    assert set(observations) == {str(campaign), str(other_campaign)}
    deleted = observations[str(campaign)]
    assert deleted.description == "export file deleted after 30 days (retention)"
    values = {key: value.value for key, value in deleted.metadata.items()}
    assert values == {
        "live_file": False,
        "deleted_uri": f"s3://{TEST_BUCKET}/{old_key}",
        "export_job_id": str(old),
    }
    assert observations[str(other_campaign)].metadata["live_file"].value is True


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
