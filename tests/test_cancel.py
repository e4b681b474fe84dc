"""Cancelling an export: through the request API, HTTP and the CLI, what the pipeline's
cancel sensor does with a running job's cancel, and how a run that a user's cancel stopped
ends in Dagster (CANCELED, or, in a backfill run, not failed for it). The real daemon's
side (a run stopped mid-export, its job cancelled with nothing left in S3, the run's final
status) is in test_end_to_end.py."""

from __future__ import annotations

import contextlib
import json
import uuid

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from sqlalchemy import text

from voicesurvey_exports.app_db import export_jobs
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import export_notifications
from voicesurvey_exports.pipeline.assets import ASSET_KEY, EXPORT_JOB_TAG
from voicesurvey_exports.pipeline.recovery import batch_job_id
from voicesurvey_exports.pipeline.sensors import (
    build_export_requests_sensor,
    export_cancel_sensor,
    export_run_canceled_sensor,
)
from voicesurvey_exports.service.requests import NotCancellable, NotFound, PermissionDenied

from .conftest import DEFAULT_OPTIONS, TEST_BUCKET, AppData, request_api, settings_for
from .dagster_harness import materialize_export, run_status_sensor_resources
from .test_backfill_batches import backfill_run, objects_in_bucket
from .test_cli import cli
from .test_http_api import service, user_with_token


@pytest.fixture
def api(engine, s3_client):
    return request_api(engine, s3_client)


def notifications_of(app_data: AppData, job_id) -> list[str]:
    with app_data.engine.connect() as conn:
        rows = conn.execute(
            export_notifications.select().where(export_notifications.c.export_job_id == job_id)
        )
        return [row.event for row in rows]


def test_pending_export_is_cancelled_at_once_and_never_run(api, app_data, database_url):
    campaign, manager = app_data.campaign(), app_data.user()
    job = api.request_export(campaign, manager)

    cancelled = api.cancel_export(job.id, manager)

    assert cancelled.status == "cancelled"
    assert cancelled.completed_at is not None
    assert cancelled.error_message == f"cancelled by user {manager} before it started"
    assert notifications_of(app_data, job.id) == ["export.cancelled"]
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            resources={"app_db": run_status_sensor_resources(database_url)["app_db"]},
        )
        result = build_export_requests_sensor(settings_for(database_url))(context)
    assert result.run_requests == []


def test_running_export_gets_a_cancel_request_that_a_second_cancel_keeps(api, app_data):
    campaign, manager = app_data.campaign(), app_data.user()
    job_id = app_data.export_job(campaign, manager, status="running", dagster_run_id="run-1")

    first = api.cancel_export(job_id, manager)
    second = api.cancel_export(job_id, app_data.user("admin"))

    assert first.status == second.status == "running"
    assert first.cancel_requested_at is not None
    assert second.cancel_requested_at == first.cancel_requested_at
    assert notifications_of(app_data, job_id) == []  # not ended yet


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_an_ended_export_cannot_be_cancelled(api, app_data, status):
    campaign, manager = app_data.campaign(), app_data.user()
    job_id = app_data.export_job(campaign, manager, status=status)
    with pytest.raises(NotCancellable) as refused:
        api.cancel_export(job_id, manager)
    assert str(refused.value) == (
        f"export job {job_id} is {status}: only a pending or running export can be cancelled"
    )
    assert app_data.job_row(job_id)["status"] == status


def test_viewers_and_strangers_cannot_cancel(api, app_data):
    campaign = app_data.campaign()
    job_id = app_data.export_job(campaign, app_data.user())
    with pytest.raises(PermissionDenied, match="has role viewer"):
        api.cancel_export(job_id, app_data.user("viewer"))
    with pytest.raises(PermissionDenied, match="is not a known user"):
        api.cancel_export(job_id, uuid.uuid4())
    with pytest.raises(NotFound, match="does not exist"):
        api.cancel_export(uuid.uuid4(), app_data.user())
    assert app_data.job_row(job_id)["status"] == "pending"


def test_a_job_asked_to_cancel_is_neither_claimed_again_nor_completed(app_data):
    campaign = app_data.campaign()
    job_id = app_data.export_job(
        campaign, status="running", dagster_run_id="run-1", s3_key="exports/x.csv"
    )
    with app_data.engine.begin() as conn:
        assert export_jobs.report_progress(conn, job_id, "run-1", 40) is True
        export_jobs.request_cancel(conn, job_id)
        # The run's next progress report tells it to stop; the progress stays.
        assert export_jobs.report_progress(conn, job_id, "run-1", 60) is False
        assert not export_jobs.mark_completed(
            conn,
            job_id,
            run_id="run-1",
            s3_key="exports/x.csv",
            download_url="https://example.invalid/signed",
            url_expires_at=export_jobs.utcnow(),
            total_records=1,
        )
        export_jobs.mark_failed(conn, job_id, "the run died", run_id="run-1")  # a retry...
        assert export_jobs.claim_job(conn, job_id, "run-2", ("failed", "running")) is None


def test_cancel_sensor_ends_a_job_whose_run_is_over_and_deletes_its_file(
    app_data, database_url, s3_client
):
    campaign = app_data.campaign()
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            dg.GraphDefinition(name="noop").to_job(), tags={EXPORT_JOB_TAG: "x"}
        )
        instance.report_run_failed(run)
        key = f"exports/{campaign}/file.csv"
        s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"contact data")
        job_id = app_data.export_job(
            campaign, status="running", dagster_run_id=run.run_id, s3_key=key
        )
        other = app_data.export_job(campaign, status="running", dagster_run_id=run.run_id)
        with app_data.engine.begin() as conn:
            export_jobs.request_cancel(conn, job_id)
        context = dg.build_sensor_context(
            instance=instance, resources=run_status_sensor_resources(database_url)
        )
        with context:
            export_cancel_sensor(context)

    row = app_data.job_row(job_id)
    assert (row["status"], row["error_message"], row["s3_key"], row["download_url"]) == (
        "cancelled",
        "cancelled at the user's request",
        None,
        None,
    )
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", []) == []
    assert app_data.job_row(other)["status"] == "running"  # nobody asked to cancel it
    assert notifications_of(app_data, job_id) == ["export.cancelled"]


def test_cancel_over_http(postgres_url, s3_client):
    app_data = AppData(get_engine(postgres_url))
    client = service(app_data.engine, s3_client)
    campaign = app_data.campaign()
    _, manager = user_with_token(app_data, "campaign_manager")
    _, viewer = user_with_token(app_data, "viewer")
    pending = app_data.export_job(campaign)
    completed = app_data.export_job(campaign, status="completed")

    assert client.post(f"/api/exports/{pending}/cancel", headers=viewer).status_code == 403
    answer = client.post(f"/api/exports/{pending}/cancel", headers=manager)
    assert answer.status_code == 202, answer.text
    assert (answer.json()["status"], answer.json()["progress_percent"]) == ("cancelled", None)
    assert answer.json()["options"] == DEFAULT_OPTIONS
    again = client.post(f"/api/exports/{pending}/cancel", headers=manager)
    assert (again.status_code, again.json()["detail"]) == (
        409,
        f"export job {pending} is cancelled: only a pending or running export can be cancelled",
    )
    assert client.post(f"/api/exports/{completed}/cancel", headers=manager).status_code == 409
    assert client.post(f"/api/exports/{uuid.uuid4()}/cancel", headers=manager).status_code == 404


def test_cancel_from_the_command_line(create_postgres_database, aws_credentials):
    from voicesurvey_exports.app_db.migrations import upgrade

    url = create_postgres_database("cancel_cli")
    upgrade(get_engine(url))
    env = {"DATABASE_URL": url, "AWS_ENDPOINT_URL": ""}
    app_data = AppData(get_engine(url))
    campaign, manager = app_data.campaign(), app_data.user()
    job_id = app_data.export_job(campaign, manager)

    done = cli("cancel", str(job_id), "--user-id", str(manager), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "cancelled"

    refused = cli("cancel", str(job_id), "--user-id", str(manager), env=env)
    assert (refused.returncode, refused.stdout) == (5, "")  # wrong state (docs/cli.md)
    assert refused.stderr == (
        f"error: export job {job_id} is cancelled: only a pending or running export can be "
        "cancelled\n"
    )


def test_a_run_failing_after_its_job_was_asked_to_cancel_ends_it_cancelled(app_data):
    """The cancel is why the run stopped (terminated, or stopped at a progress report):
    decided in the same UPDATE, so a cancel asked for a moment before is never lost."""
    job_id = app_data.export_job(app_data.campaign(), status="running", dagster_run_id="run-1")
    with app_data.engine.begin() as conn:
        export_jobs.request_cancel(conn, job_id)
        assert export_jobs.mark_failed(conn, job_id, "the run was terminated", run_id="run-1")
    row = app_data.job_row(job_id)
    assert (row["status"], row["error_message"]) == ("cancelled", "cancelled at the user's request")
    assert notifications_of(app_data, job_id) == ["export.cancelled"]


def test_the_queued_run_of_a_job_cancelled_while_pending_is_taken_off_the_queue(
    api, app_data, database_url
):
    campaign, manager = app_data.campaign(), app_data.user()
    job = api.request_export(campaign, manager)
    queued_run_coordinator = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }
    }
    with dg.instance_for_test(overrides=queued_run_coordinator) as instance:
        noop = dg.GraphDefinition(name="noop").to_job()

        # A queued run names its code location (the queue launches it from there).
        origin = RemoteRepositoryOrigin(
            RegisteredCodeLocationOrigin("voicesurvey_exports"), "__repository__"
        ).get_job_origin("noop")

        def queued_run(job_id):
            return instance.create_run_for_job(
                noop,
                status=dg.DagsterRunStatus.QUEUED,
                tags={EXPORT_JOB_TAG: str(job_id)},
                remote_job_origin=origin,
            )

        run = queued_run(job.id)  # what the request sensor launched for it, still queued
        other = queued_run(uuid.uuid4())
        api.cancel_export(job.id, manager)
        context = dg.build_sensor_context(
            instance=instance, resources=run_status_sensor_resources(database_url)
        )
        with context:
            export_cancel_sensor(context)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
        assert instance.get_run_by_id(other.run_id).status == dg.DagsterRunStatus.QUEUED


@contextlib.contextmanager
def user_cancels_once_running(engine, campaign_id):
    """The campaign's export job gets its user's cancel the moment a run starts on it (it
    is claimed, or a backfill run inserts it): the run notices at its next progress
    report, mid-export, as it would a cancel over HTTP."""
    with engine.begin() as conn:
        conn.execute(
            text("""
            CREATE FUNCTION test_cancel_once_running() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.cancel_requested_at := coalesce(NEW.cancel_requested_at, now());
            RETURN NEW; END $$""")
        )
        conn.execute(
            text(f"""
            CREATE TRIGGER test_cancel_once_running BEFORE INSERT OR UPDATE ON export_jobs
            FOR EACH ROW WHEN (NEW.status = 'running' AND NEW.campaign_id = '{campaign_id}')
            EXECUTE FUNCTION test_cancel_once_running()""")
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_cancel_once_running ON export_jobs"))
            conn.execute(text("DROP FUNCTION test_cancel_once_running()"))


def test_a_run_whose_only_campaign_its_user_cancelled_ends_canceled_not_failed(
    postgres_url, s3_client
):
    app_data = AppData(get_engine(postgres_url))
    campaign, manager = app_data.campaign(), app_data.user()
    for _ in range(3):
        app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, manager)

    with dg.instance_for_test() as instance:
        with user_cancels_once_running(app_data.engine, campaign):
            result = materialize_export(instance, postgres_url, campaign, job_id)
        run = instance.get_run_by_id(result.run_id)
        # Operators alert on FAILURE: a user's cancel must not look like one.
        assert run.status == dg.DagsterRunStatus.CANCELED
        assert instance.get_materialized_partitions(ASSET_KEY) == set()
        with dg.build_run_status_sensor_context(
            sensor_name="export_run_canceled_sensor",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=dg.DagsterEvent(
                event_type_value="PIPELINE_CANCELED", job_name=run.job_name, message="cancelled"
            ),
            resources=run_status_sensor_resources(postgres_url),
        ) as context:
            export_run_canceled_sensor(context)

    row = app_data.job_row(job_id)
    assert (row["status"], row["error_message"], row["download_url"]) == (
        "cancelled",
        "cancelled at the user's request",
        None,
    )
    assert objects_in_bucket(s3_client) == []
    assert notifications_of(app_data, job_id) == ["export.cancelled"]


def test_a_campaign_cancelled_in_a_backfill_run_leaves_the_others_and_the_run_successful(
    postgres_url, s3_client
):
    app_data = AppData(get_engine(postgres_url))
    campaigns = [app_data.campaign(f"Batch {i}") for i in range(3)]
    for campaign in campaigns:
        app_data.contact(campaign, "completed")
    cancelled = campaigns[1]

    with dg.instance_for_test() as instance:
        with user_cancels_once_running(app_data.engine, cancelled):
            result = backfill_run(instance, postgres_url, campaigns)

        assert result.success, result.get_run_failure_event()
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_materialized_partitions(ASSET_KEY) == {
            str(c) for c in campaigns if c != cancelled
        }
    jobs = [app_data.job_row(batch_job_id(result.dagster_run, c)) for c in campaigns]
    assert [(j["status"], j["error_message"]) for j in jobs] == [
        ("completed", None),
        ("cancelled", "cancelled at the user's request"),
        ("completed", None),
    ]
    assert sorted(objects_in_bucket(s3_client)) == sorted([jobs[0]["s3_key"], jobs[2]["s3_key"]])
