"""Every export_jobs transition is a compare-and-set: the races found by reading the old
unconditional updates cannot happen."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from voicesurvey_exports.app_db import export_jobs

from .conftest import TEST_BUCKET
from .dagster_harness import materialize_export, run_failure_sensor


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def completed_job_with_file(app_data, s3_client):
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.completed_export(
        campaign,
        app_data.user(),
        s3_client=s3_client,
        download_url="https://link/original",
        url_expires_at=datetime.now(UTC) + timedelta(hours=1),
        total_records=1,
        completed_at=datetime.now(UTC),
        dagster_run_id="run-that-completed-it",
    )
    return campaign, job_id, app_data.job_row(job_id)["s3_key"]


def test_only_one_of_two_runs_claims_a_pending_job(app_data):
    job_id = app_data.export_job(app_data.campaign(), app_data.user())
    with app_data.engine.begin() as conn:
        first = export_jobs.claim_job(conn, job_id, "run-a", ["pending"])
        second = export_jobs.claim_job(conn, job_id, "run-b", ["pending"])
    assert first is not None and second is None
    assert app_data.job_row(job_id)["dagster_run_id"] == "run-a"


def test_refreshed_link_is_not_stored_for_a_file_that_retention_deleted_meanwhile(
    app_data, s3_client
):
    _, job_id, key = completed_job_with_file(app_data, s3_client)
    with app_data.engine.begin() as conn:
        read = export_jobs.get_job(conn, job_id)  # refresh-url reads the row...
        # ...retention deletes the file and clears the row in between...
        assert export_jobs.mark_file_deleted(conn, job_id, s3_key=key, message="deleted")
        # ...and refresh-url's write must not bring a link to the deleted file back.
        stored = export_jobs.update_download_url(
            conn,
            job_id,
            s3_key=read.s3_key,
            download_url="https://link/fresh",
            url_expires_at=datetime.now(UTC),
        )
    assert not stored
    assert app_data.job_row(job_id)["download_url"] is None


def test_a_run_with_a_completed_jobs_tag_changes_neither_the_job_nor_its_file(
    instance, database_url, app_data, s3_client
):
    campaign, job_id, key = completed_job_with_file(app_data, s3_client)

    result = materialize_export(instance, database_url, campaign, job_id)
    run_failure_sensor(instance, result, database_url)

    assert not result.success
    job = app_data.job_row(job_id)
    assert (job["status"], job["s3_key"], job["download_url"]) == (
        "completed",
        key,
        "https://link/original",
    )
    assert s3_client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read() == b"campaign_id\r\n"
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description.startswith(f"export job {job_id} is already completed")


def test_a_run_with_the_tag_of_a_job_another_run_owns_cannot_fail_it(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    job_id = app_data.export_job(
        campaign, app_data.user(), status="running", dagster_run_id="the-owner"
    )

    result = materialize_export(instance, database_url, campaign, job_id)
    run_failure_sensor(instance, result, database_url)

    assert not result.success
    job = app_data.job_row(job_id)
    assert (job["status"], job["dagster_run_id"], job["error_message"]) == (
        "running",
        "the-owner",
        None,
    )


def test_completion_needs_the_owning_run_and_the_recorded_key(app_data):
    job_id = app_data.export_job(
        app_data.campaign(), app_data.user(), status="running", dagster_run_id="owner"
    )
    with app_data.engine.begin() as conn:
        assert export_jobs.record_object_key(conn, job_id, "owner", "exports/a.csv")
        assert not export_jobs.record_object_key(conn, job_id, "intruder", "exports/b.csv")
        values = dict(download_url="https://l", url_expires_at=datetime.now(UTC), total_records=0)
        assert not export_jobs.mark_completed(
            conn, job_id, run_id="intruder", s3_key="exports/a.csv", **values
        )
        assert not export_jobs.mark_completed(
            conn, job_id, run_id="owner", s3_key="exports/b.csv", **values
        )
        assert export_jobs.mark_completed(
            conn, job_id, run_id="owner", s3_key="exports/a.csv", **values
        )
        # A late failure of any run never moves a completed job back.
        assert not export_jobs.mark_failed(conn, job_id, "late", run_id="owner")
    assert app_data.job_row(job_id)["status"] == "completed"


def test_a_retry_that_dies_before_claiming_the_job_still_fails_it(
    instance, postgres_url, s3_client
):
    from voicesurvey_exports.app_db.engine import get_engine
    from voicesurvey_exports.pipeline.assets import EXPORT_JOB_TAG
    from voicesurvey_exports.pipeline.sensors import export_run_failure_sensor

    from .conftest import AppData
    from .dagster_harness import run_status_sensor_resources

    app = AppData(get_engine(postgres_url))
    campaign = app.campaign()
    app.contact(campaign, "completed")
    job_id = app.export_job(campaign, app.user())
    # The first run claims the job and dies; the daemon's retry is left to finish it.
    first = materialize_export(instance, postgres_url, campaign, job_id, bucket="no-such-bucket")
    assert app.job_row(job_id)["dagster_run_id"] == first.run_id
    # The retry fails before any of its ops runs (never started, inputs unreadable...).
    retry = dg.DagsterRun(
        job_name=first.dagster_run.job_name,
        run_id=str(uuid.uuid4()),
        parent_run_id=first.run_id,
        root_run_id=first.run_id,
        tags={EXPORT_JOB_TAG: str(job_id)},
        status=dg.DagsterRunStatus.FAILURE,
    )
    with dg.build_run_status_sensor_context(
        sensor_name="export_run_failure_sensor",
        dagster_instance=instance,
        dagster_run=retry,
        dagster_event=first.get_run_failure_event(),
        resources=run_status_sensor_resources(postgres_url),
    ) as context:
        export_run_failure_sensor(context.for_run_failure())

    assert app.job_row(job_id)["status"] == "failed"


def test_a_ui_run_with_a_mistyped_tag_cannot_fail_a_pending_request(
    instance, database_url, app_data, s3_client
):
    campaign, other = app_data.campaign(), app_data.campaign("Other")
    job_id = app_data.export_job(campaign, app_data.user())

    # Launched by hand with the request's job id on the wrong campaign's partition.
    result = materialize_export(instance, database_url, other, job_id, launched_by_sensor=False)
    run_failure_sensor(instance, result, database_url)

    assert not result.success
    assert app_data.job_row(job_id)["status"] == "pending"  # its own run will still come


def test_reexecuting_a_ui_run_whose_job_row_was_never_written_exports_under_that_id(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    orphan_tag = uuid.uuid4()  # the parent tagged itself, then failed before the insert

    result = materialize_export(
        instance, database_url, campaign, orphan_tag, launched_by_sensor=False
    )

    assert result.success
    job = app_data.job_row(orphan_tag)
    assert (job["status"], job["total_records"]) == ("completed", 1)
