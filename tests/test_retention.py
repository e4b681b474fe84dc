import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from voicesurvey_exports.pipeline import retention
from voicesurvey_exports.pipeline.export_checks import ASSET_KEY
from voicesurvey_exports.pipeline.partitions import campaigns_partitions
from voicesurvey_exports.pipeline.resources import ExportDestination
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


class S3RefusingDeletes(S3Resource):
    """The real client; the service refuses to delete the given keys (a legal hold, a
    bucket policy)."""

    refused_keys: str  # space-separated (the resource's configuration must be hashable)

    def get_client(self):
        client = super().get_client()

        def refuse(params, **_):
            if params.get("Key") in self.refused_keys.split():
                raise ClientError(
                    {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "DeleteObject"
                )

        client.meta.events.register("before-parameter-build.s3.DeleteObject", refuse)
        return client


class DestinationRefusingDeletes(ExportDestination):
    refused_keys: str

    def s3_resource(self) -> S3Resource:
        return S3RefusingDeletes(
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            refused_keys=self.refused_keys,
        )


def resources_refusing_deletes(database_url: str, *keys: str) -> dict:
    resources = export_resources(database_url)
    destination = resources["destination"]
    resources["destination"] = DestinationRefusingDeletes(
        **{field: getattr(destination, field) for field in ExportDestination.model_fields},
        refused_keys=" ".join(keys),
    )
    return resources


def failed_job_with_file(app_data, s3_client, reason: str):
    """A failed job whose file is still there (S3 was down when it failed)."""
    campaign = app_data.campaign()
    key = f"exports/{campaign}/{uuid.uuid4()}.csv"
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"campaign_id\r\n")
    job = app_data.export_job(
        campaign, status="failed", s3_key=key, error_message=reason, completed_at=datetime.now(UTC)
    )
    return job, key


def bucket_keys(s3_client) -> set[str]:
    return {o["Key"] for o in s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])}


def test_a_file_s3_refuses_to_delete_is_reported_and_every_other_expired_file_still_goes(
    database_url, app_data, s3_client, monkeypatch
):
    # Pages of one job: the refused files come first and stay, and the run moves past them.
    monkeypatch.setattr(retention, "BATCH", 1)
    held, held_key = completed_job(app_data, s3_client, days_ago=40)  # the oldest
    later = [completed_job(app_data, s3_client, days_ago=days) for days in (35, 31)]
    failed, _ = failed_job_with_file(app_data, s3_client, "upload check failed")
    held_failed, held_failed_key = failed_job_with_file(app_data, s3_client, "the run was killed")
    recent, recent_key = completed_job(app_data, s3_client, days_ago=1)
    resources = resources_refusing_deletes(database_url, held_key, held_failed_key)

    with dg.instance_for_test() as instance:
        result = export_retention_job.execute_in_process(
            instance=instance, resources=resources, raise_on_error=False
        )
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]

    # Every other file past retention (and the failed job's) is gone; the refused ones stay.
    assert bucket_keys(s3_client) == {held_key, held_failed_key, recent_key}
    for job, _ in later:
        assert app_data.job_row(job)["s3_key"] is None
    assert (app_data.job_row(failed)["s3_key"], app_data.job_row(failed)["error_message"]) == (
        None,
        "upload check failed",
    )
    # The run fails, so that operators notice, naming each refused job and key.
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = failure.step_failure_data.user_failure_data
    assert data.description.startswith("deleted 3 export files")
    assert f"S3 refused to delete 2: job {held} (s3://{TEST_BUCKET}/{held_key})" in (
        data.description
    )
    metadata = {key: value.value for key, value in data.metadata.items()}
    assert metadata["deleted_files"] == 3 and metadata["refused_deletions"] == 2
    assert {(entry["export_job_id"], entry["s3_key"]) for entry in metadata["refused"]} == {
        (str(held), held_key),
        (str(held_failed), held_failed_key),
    }
    assert all("AccessDenied" in entry["reason"] for entry in metadata["refused"])
    assert any(
        f"S3 refused to delete the file of completed export job {held}: s3://{TEST_BUCKET}/"
        f"{held_key}: An error occurred (AccessDenied)" in message
        for message in logged
    )
    # The refused files' jobs are as they were: the completed one keeps its link, the
    # failed one its reason.
    assert app_data.job_row(held)["download_url"] == "https://link"
    held_failed_row = app_data.job_row(held_failed)
    assert (held_failed_row["s3_key"], held_failed_row["error_message"]) == (
        held_failed_key,
        "the run was killed",
    )


def test_a_job_whose_file_s3_refused_to_delete_keeps_its_link(database_url, app_data, s3_client):
    job, key = completed_job(app_data, s3_client, days_ago=31)
    before = app_data.job_row(job)

    result = export_retention_job.execute_in_process(
        resources=resources_refusing_deletes(database_url, key), raise_on_error=False
    )

    assert not result.success
    assert app_data.job_row(job) == before  # key, link, its expiry, no message
    api = request_api(app_data.engine, s3_client)
    shown = api.get_export(job, app_data.user("admin")).to_json()
    assert (shown["s3_key"], shown["download_url"]) == (key, "https://link")
