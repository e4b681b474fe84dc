"""A job's object is found in the bucket its row records (export_jobs.s3_bucket), not in
whatever S3_BUCKET_NAME says now: refresh-url signs it there, retention and the clean-up
of a failed job delete it there."""

import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import dagster as dg

from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.pipeline.failures import end_job_and_delete_file
from voicesurvey_exports.pipeline.retention import export_retention_job

from .conftest import TEST_BUCKET, TEST_REGION, request_api
from .dagster_harness import export_resources, materialize_export

NEW_BUCKET = "new-exports"


def keys_in(s3_client, bucket: str) -> set[str]:
    return {item["Key"] for item in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def create_new_bucket(s3_client) -> None:
    s3_client.create_bucket(
        Bucket=NEW_BUCKET, CreateBucketConfiguration={"LocationConstraint": TEST_REGION}
    )


def test_a_job_completed_in_one_bucket_is_refreshed_and_deleted_there_after_the_bucket_changes(
    database_url, app_data, s3_client
):
    create_new_bucket(s3_client)
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())
    with dg.instance_for_test() as instance:
        assert materialize_export(instance, database_url, campaign, job_id).success
    key = app_data.job_row(job_id)["s3_key"]
    assert app_data.job_row(job_id)["s3_bucket"] == TEST_BUCKET

    # S3_BUCKET_NAME changes (or the HTTP service is configured apart from the pipeline).
    api = request_api(app_data.engine, s3_client, S3_BUCKET_NAME=NEW_BUCKET)
    refreshed = api.refresh_download_url(job_id, app_data.user("admin"))

    link = urlparse(refreshed.download_url)
    assert TEST_BUCKET in link.netloc + link.path and NEW_BUCKET not in refreshed.download_url
    assert (refreshed.s3_key, refreshed.s3_bucket) == (key, TEST_BUCKET)

    with app_data.engine.begin() as conn:  # past retention
        conn.execute(
            export_jobs.update()
            .where(export_jobs.c.id == job_id)
            .values(completed_at=datetime.now(UTC) - timedelta(days=31))
        )
    result = export_retention_job.execute_in_process(
        resources=export_resources(database_url, bucket=NEW_BUCKET)
    )

    assert result.output_for_node("delete_expired_exports") == 1
    assert keys_in(s3_client, TEST_BUCKET) == set()
    assert app_data.job_row(job_id)["s3_key"] is None


def test_a_failed_jobs_file_is_deleted_from_the_bucket_its_row_records(
    database_url, app_data, s3_client
):
    create_new_bucket(s3_client)
    key = "exports/running.csv"  # its key and bucket recorded, then the upload
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"campaign_id\r\n")
    job_id = app_data.export_job(
        app_data.campaign(),
        status="running",
        dagster_run_id="run-1",
        s3_key=key,
        s3_bucket=TEST_BUCKET,
    )
    resources = export_resources(database_url, bucket=NEW_BUCKET)

    ended = end_job_and_delete_file(
        resources["app_db"],
        resources["destination"],
        job_id,
        "upload failed",
        "run-1",
        logging.getLogger(__name__),
    )

    assert ended
    assert keys_in(s3_client, TEST_BUCKET) == set()
    job = app_data.job_row(job_id)
    assert (job["status"], job["s3_key"]) == ("failed", None)
