"""Retries and "re-execute from failure" complete the same export job, and a failure after
the upload leaves no file behind and no signed link in Dagster's event log.

The runs here go through ``dg.execute_job`` on a reconstructable job, the same path a
run worker takes, so a re-execution loads its parent's outputs the way the daemon's
retries and the UI's "re-execute from failure" do.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io

import dagster as dg
import pytest
from botocore.exceptions import ClientError
from dagster._serdes import serialize_value
from sqlalchemy import text

from voicesurvey_exports.app_db import export_jobs
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.export_file.s3_object import ExportObjects
from voicesurvey_exports.pipeline import failures
from voicesurvey_exports.pipeline.assets import (
    EXPORT_JOB_TAG,
    REQUESTS_SENSOR,
    SENSOR_NAME_TAG,
    campaign_export,
    campaign_export_job,
)
from voicesurvey_exports.pipeline.retention import export_retention_job

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


def export_job_for_tests(
    database_url: str, bucket: str, spool_dir: str | None = None
) -> dg.JobDefinition:
    """campaign_export_job with test resources (a reconstructable job is built by a
    module-level function, as a run worker rebuilds it)."""
    defs = dg.Definitions(
        assets=[campaign_export],
        jobs=[campaign_export_job],
        resources=export_resources(database_url, bucket=bucket, spool_dir=spool_dir),
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


@contextlib.contextmanager
def links_refused(engine):
    """While inside, the database refuses any export_jobs row with a link (constraint
    refuse_links): the UPDATE that completes a job fails, after its upload."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE export_jobs ADD CONSTRAINT refuse_links "
                "CHECK (download_url IS NULL) NOT VALID"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE export_jobs DROP CONSTRAINT refuse_links"))


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
    with links_refused(app.engine):
        failed = run_export(campaign, job_id)
        assert not failed.success
        run_failure_sensor(instance, failed, postgres_url)

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


def failed_after_its_upload(run_export, app: AppData, s3_client, contacts: int):
    """A run that uploaded its file and then failed to complete the job (the database
    refused the link); its failure not handled yet: the job is `running` under it."""
    campaign, job_id = campaign_with_contacts(app, contacts)
    with links_refused(app.engine):
        failed = run_export(campaign, job_id)
    assert not failed.success
    job = app.job_row(job_id)
    assert (job["status"], job["dagster_run_id"]) == ("running", failed.run_id)
    assert bucket_keys(s3_client) == [job["s3_key"]]
    return campaign, job_id, failed


def s3_is_down(self, key):
    raise ClientError(
        {"Error": {"Code": "ServiceUnavailable", "Message": "Please reduce your request rate."}},
        "DeleteObject",
    )


def once(hook):
    """A function that runs ``hook`` the first time it is called, and does nothing after."""
    pending = [hook]

    def call():
        if pending:
            pending.pop()()

    return call


@pytest.mark.parametrize("clean_up", ["failure sensor", "retention"])
@pytest.mark.parametrize("moment", ["after it read the job", "just before it deletes the file"])
def test_a_clean_up_racing_a_reexecution_never_deletes_the_file_the_job_completes_with(
    instance, postgres_url, run_export, s3_client, monkeypatch, clean_up, moment
):
    app = AppData(get_engine(postgres_url))
    campaign, job_id, failed = failed_after_its_upload(run_export, app, s3_client, 3)
    if clean_up == "retention":
        # The failure sensor ended the job while S3 was down: retention deletes its file.
        with monkeypatch.context() as outage:
            outage.setattr(ExportObjects, "delete", s3_is_down)
            run_failure_sensor(instance, failed, postgres_url)
        assert app.job_row(job_id)["status"] == "failed" and app.job_row(job_id)["s3_key"]
    # The re-execution from failure (the UI's, or a retry) runs at the moment chosen.
    reexecutions = []
    reexecute = once(
        lambda: reexecutions.append(run_export(campaign, job_id, reexecute_from=failed.run_id))
    )
    if moment == "just before it deletes the file":
        delete = ExportObjects.delete

        def reexecute_then_delete(self, key):
            reexecute()
            delete(self, key)

        monkeypatch.setattr(ExportObjects, "delete", reexecute_then_delete)
    elif clean_up == "retention":
        ended_with_objects = export_jobs.ended_with_objects

        def read_then_reexecute(*args, **kwargs):
            jobs = ended_with_objects(*args, **kwargs)
            if jobs:
                reexecute()
            return jobs

        monkeypatch.setattr(export_jobs, "ended_with_objects", read_then_reexecute)
    else:
        delete_file_of_ended_job = failures.delete_file_of_ended_job

        def reexecute_then_delete_file(*args, **kwargs):
            reexecute()
            return delete_file_of_ended_job(*args, **kwargs)

        monkeypatch.setattr(failures, "delete_file_of_ended_job", reexecute_then_delete_file)

    if clean_up == "retention":
        export_retention_job.execute_in_process(
            instance=instance, resources=export_resources(postgres_url)
        )
    else:
        run_failure_sensor(instance, failed, postgres_url)

    [reexecuted] = reexecutions
    assert reexecuted.success
    job = app.job_row(job_id)
    assert (job["status"], job["dagster_run_id"]) == ("completed", reexecuted.run_id)
    assert job["download_url"] and job["total_records"] == 3
    # The file the job completed with is there, and it is the only one.
    assert bucket_keys(s3_client) == [job["s3_key"]]
    assert len(stored_rows(s3_client, job["s3_key"])) == 3


def test_a_run_that_lost_its_job_and_uploads_late_changes_neither_the_winners_file_nor_the_job(
    instance, postgres_url, s3_client, monkeypatch, tmp_path
):
    app = AppData(get_engine(postgres_url))
    campaign, job_id = campaign_with_contacts(app, 3)
    instance.add_dynamic_partitions("campaigns", [str(campaign)])
    tags = {
        "dagster/partition": str(campaign),
        EXPORT_JOB_TAG: str(job_id),
        SENSOR_NAME_TAG: REQUESTS_SENSOR,
    }
    winner = {}
    retry_worker_spool = tmp_path / "retry-worker"  # another worker's disk
    retry_worker_spool.mkdir()

    def retry_takes_over():
        # Run monitoring fails the first run while its worker lives on (ECS, Kubernetes),
        # and the run retry, on another worker, completes the job; the campaign has one
        # more finished contact by then.
        [first] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        instance.report_run_failed(first)
        contact = app.contact(campaign, "completed", external_contact_id="ext-late")
        app.response(contact, campaign, "late answer")
        retry = execute_reconstructable(
            instance,
            __name__,
            export_job_for_tests.__name__,
            {
                "database_url": postgres_url,
                "bucket": TEST_BUCKET,
                "spool_dir": str(retry_worker_spool),
            },
            tags=tags,
            reexecution_options=dg.ReexecutionOptions(parent_run_id=first.run_id),
        )
        assert retry.success
        job = app.job_row(job_id)
        winner.update(run_id=retry.run_id, job=job, body=stored_body(s3_client, job["s3_key"]))

    take_over = once(retry_takes_over)
    upload = ExportObjects.upload

    def upload_after_the_retry(self, *args, **kwargs):
        take_over()  # the first run's final upload lands after the retry completed the job
        return upload(self, *args, **kwargs)

    monkeypatch.setattr(ExportObjects, "upload", upload_after_the_retry)

    first = execute_reconstructable(
        instance,
        __name__,
        export_job_for_tests.__name__,
        {"database_url": postgres_url, "bucket": TEST_BUCKET},
        tags=tags,
    )

    assert not first.success  # it may not complete the job any more
    job = app.job_row(job_id)
    assert job == winner["job"]
    assert (job["status"], job["dagster_run_id"]) == ("completed", winner["run_id"])
    assert job["total_records"] == 4
    body = stored_body(s3_client, job["s3_key"])
    assert body == winner["body"] and hashlib.sha256(body).hexdigest() == job["sha256"]
    assert bucket_keys(s3_client) == [job["s3_key"]]  # the late run deleted its own object


def stored_body(s3_client, key: str) -> bytes:
    return s3_client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read()
