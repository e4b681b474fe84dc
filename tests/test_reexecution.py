"""Retries and "re-execute from failure" complete the same export job, and a failure after
the upload leaves no file behind and no signed link in Dagster's event log.

The runs here go through ``dg.execute_job`` on a reconstructable job, the same path a
run worker takes, so a re-execution loads its parent's outputs the way the daemon's
retries and the UI's "re-execute from failure" do.
"""

from __future__ import annotations

import csv
import io

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from sqlalchemy import text

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.pipeline.assets import (
    EXPORT_JOB_TAG,
    REQUESTS_SENSOR,
    SENSOR_NAME_TAG,
    campaign_export,
    campaign_export_job,
)

from .conftest import TEST_BUCKET, AppData
from .dagster_harness import execute_reconstructable, export_resources, run_failure_sensor

pytestmark = pytest.mark.postgres
# What a presigned link carries: any of these in an event or a log line is a leak
# (PostgreSQL cuts long values in its DETAIL line, so the link's start counts too).
SIGNATURE_MARKERS = (
    "X-Amz-Signature",
    "X-Amz-Credential",
    "Signature=",
    "AWSAccessKeyId",
    f"{TEST_BUCKET}.s3.amazonaws.com/",
)


def export_job_for_tests(database_url: str, bucket: str) -> dg.JobDefinition:
    """campaign_export_job with test resources (a reconstructable job is built by a
    module-level function, as a run worker rebuilds it)."""
    defs = dg.Definitions(
        assets=[campaign_export],
        jobs=[campaign_export_job],
        resources=export_resources(database_url, bucket=bucket),
        executor=dg.in_process_executor,
    )
    return defs.resolve_job_def(campaign_export_job.name)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def run_export(instance, postgres_url, s3_client):
    def run(campaign, job_id, bucket=TEST_BUCKET, reexecute_from=None):
        instance.add_dynamic_partitions("campaigns", [str(campaign)])
        options = (
            dg.ReexecutionOptions.from_failure(reexecute_from, instance) if reexecute_from else None
        )
        return execute_reconstructable(
            instance,
            __name__,
            export_job_for_tests.__name__,
            {"database_url": postgres_url, "bucket": bucket},
            tags=None
            if options
            else {
                "dagster/partition": str(campaign),
                EXPORT_JOB_TAG: str(job_id),
                SENSOR_NAME_TAG: REQUESTS_SENSOR,
            },
            reexecution_options=options,
        )

    return run


def campaign_with_contacts(app: AppData, count: int):
    campaign = app.campaign()
    for n in range(count):
        contact = app.contact(campaign, "completed", external_contact_id=f"ext-{n}")
        app.response(contact, campaign, f"answer {n}", "N/A", None)
    return campaign, app.export_job(campaign, app.user())


def stored_rows(s3_client, key: str) -> list[dict]:
    body = s3_client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(body, newline="")))


def bucket_keys(s3_client) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=TEST_BUCKET)
    return [item["Key"] for item in listing.get("Contents", [])]


def executed_steps(instance, run_id: str) -> set[str]:
    return {
        record.event_log_entry.step_key.rsplit(".", 1)[-1]
        for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.STEP_START
        ).records
    }


def event_log_text(instance, run_id: str) -> str:
    return "\n".join(serialize_value(entry) for entry in instance.all_logs(run_id))


def test_run_failed_at_upload_and_reexecuted_from_failure_completes_the_same_job(
    instance, postgres_url, run_export, s3_client
):
    app = AppData(get_engine(postgres_url))
    campaign, job_id = campaign_with_contacts(app, 25)

    failed = run_export(campaign, job_id, bucket="no-such-bucket")
    assert not failed.success
    run_failure_sensor(instance, failed, postgres_url)
    assert app.job_row(job_id)["status"] == "failed"

    retried = run_export(campaign, job_id, reexecute_from=failed.run_id)

    assert retried.success
    # Only the failed step and what follows ran again; the parent's spool was gone.
    assert executed_steps(instance, retried.run_id) == {"upload_csv", "record_export"}
    job = app.job_row(job_id)
    assert (job["status"], job["error_message"], job["total_records"]) == ("completed", None, 25)
    assert job["dagster_run_id"] == retried.run_id
    rows = stored_rows(s3_client, job["s3_key"])
    assert sorted(row["external_contact_id"] for row in rows) == sorted(
        f"ext-{n}" for n in range(25)
    )
    assert {row["q2_answer"] for row in rows} == {"N/A"}


def test_database_refusing_the_completion_leaves_no_file_and_no_link_in_the_event_log(
    instance, postgres_url, run_export, s3_client, caplog
):
    app = AppData(get_engine(postgres_url))
    campaign, job_id = campaign_with_contacts(app, 3)
    # The database refuses any row with a link: the UPDATE that completes the job fails,
    # and PostgreSQL's error DETAIL would repeat the failing row, link included.
    with app.engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE export_jobs ADD CONSTRAINT refuse_links "
                "CHECK (download_url IS NULL) NOT VALID"
            )
        )
    try:
        failed = run_export(campaign, job_id)
        assert not failed.success
        run_failure_sensor(instance, failed, postgres_url)
    finally:
        with app.engine.begin() as conn:
            conn.execute(text("ALTER TABLE export_jobs DROP CONSTRAINT refuse_links"))

    job = app.job_row(job_id)
    assert job["status"] == "failed"
    assert "refuse_links" in job["error_message"] and "\n" not in job["error_message"]
    assert (job["s3_key"], job["download_url"]) == (None, None)
    assert bucket_keys(s3_client) == []  # a failed job leaves no file behind
    logged = event_log_text(instance, failed.run_id) + caplog.text + job["error_message"]
    assert "record_export" in event_log_text(instance, failed.run_id)
    for marker in SIGNATURE_MARKERS:
        assert marker not in logged

    # The database accepts links again: re-executing from failure completes the same job,
    # exporting again because the failed run's file was deleted.
    retried = run_export(campaign, job_id, reexecute_from=failed.run_id)
    assert retried.success
    assert executed_steps(instance, retried.run_id) == {"record_export"}
    job = app.job_row(job_id)
    assert (job["status"], job["total_records"]) == ("completed", 3)
    assert bucket_keys(s3_client) == [job["s3_key"]]
    assert len(stored_rows(s3_client, job["s3_key"])) == 3
