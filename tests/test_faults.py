"""Faults with the real daemon and webserver, on each instance file (run retries on;
Dagster's own launcher and plain `dagster-daemon run`, and the fast path's
ForkingRunLauncher with `voicesurvey-exports-daemon`): a run worker killed mid-export is
retried and completes the same job with the whole file; a run that failed at upload,
re-executed from failure as the UI does, completes it too; a run terminated from the UI
mid-export ends canceled, its job cancelled and nothing in S3."""

from __future__ import annotations

import csv
import io
import os
import re
import signal

import psycopg2
import pytest
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine

from .conftest import AppData
from .test_process_group import alive

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
BUCKET = "fault-exports"
LARGE_CAMPAIGN = 60_000
REEXECUTE = """
mutation($parentRunId: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}"""
# Dagster's own event from the run worker, whichever launcher started it.
WORKER_EVENTS = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run {
  eventConnection { events { ... on EngineEvent { message } } } } } }"""
WORKER_STARTED = re.compile(r"Started process for run \(pid: (\d+)\)")
RUN_STATUS = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"""


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module", params=list(local_services.INSTANCES))
def stack(request, stack_databases, spool_dir, tmp_path_factory):
    settings = {
        **stack_databases("fault"),
        "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
        "EXPORT_SPOOL_DIR": str(spool_dir),
    }
    home = tmp_path_factory.mktemp("dagster_home")
    instance = local_services.INSTANCES[request.param]
    with local_services.local_stack(home, settings, bucket=BUCKET, instance=instance) as stack:
        yield stack


@pytest.fixture(scope="module")
def app(stack) -> AppData:
    return AppData(get_engine(stack.env["DATABASE_URL"]))


def run_worker(stack, run_id: str) -> int | None:
    """The pid of the run's worker, from the event its worker reports when it starts."""
    run = local_services.graphql(stack.graphql, WORKER_EVENTS, {"runId": run_id})
    events = run["data"]["runOrError"].get("eventConnection", {}).get("events", [])
    for event in events:
        started = WORKER_STARTED.search(event.get("message") or "")
        if started:
            return int(started.group(1))
    return None


def add_contacts(app: AppData, campaign, count: int) -> None:
    """A large campaign in one statement: every contact finished, each with answers."""
    with app.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contacts (campaign_id, external_contact_id, phone_number, state, "
                "attempts_count, last_attempt_at) SELECT :campaign, 'ext-' || n, "
                "'+3905500' || n, 'completed', 1, now() FROM generate_series(1, :count) AS n"
            ),
            {"campaign": campaign, "count": count},
        )
        conn.execute(
            text(
                "INSERT INTO survey_responses (contact_id, campaign_id, q1_answer, q2_answer) "
                "SELECT id, campaign_id, 'N/A', 'null' FROM contacts WHERE campaign_id = :campaign"
            ),
            {"campaign": campaign},
        )


def downloaded_rows(url: str) -> list[dict]:
    import requests

    response = requests.get(url, timeout=60)
    response.raise_for_status()
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline="")))


def finished(app: AppData, job_id) -> dict | None:
    row = app.job_row(job_id)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def test_run_worker_killed_mid_export_is_retried_and_completes_the_same_job(stack, app, spool_dir):
    campaign = app.campaign()
    add_contacts(app, campaign, LARGE_CAMPAIGN)
    locker = psycopg2.connect(stack.env["DATABASE_URL"])
    try:
        # The extract waits on this lock, so the run is mid-export when it is killed.
        locker.cursor().execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
        job_id = app.export_job(campaign, app.user())
        processes.wait_for(lambda: app.job_row(job_id)["status"] == "running", 120, "the run")
        killed_run = app.job_row(job_id)["dagster_run_id"]
        worker = processes.wait_for(lambda: run_worker(stack, killed_run), 30, "the run worker")
        # The worker is one of the daemon's processes (a fork of its forkserver, or a
        # child of the code server the daemon started).
        assert worker in {pid for pid, _ in processes.group_members(stack.daemon.pid)}
        os.kill(worker, signal.SIGKILL)
        locker.rollback()
    finally:
        locker.close()

    job = processes.wait_for(lambda: finished(app, job_id), 300, "the retried run", interval=1)

    assert job["status"] == "completed", job["error_message"]
    assert job["dagster_run_id"] != killed_run  # the retry run completed it
    rows = downloaded_rows(job["download_url"])
    assert len(rows) == job["total_records"] == LARGE_CAMPAIGN
    assert {(row["q1_answer"], row["q2_answer"]) for row in rows} == {("N/A", "null")}
    # Nothing of the killed run is left on the worker's disk.
    assert list(spool_dir.iterdir()) == []


def test_run_failed_at_upload_reexecuted_from_failure_completes_the_same_job(stack, app):
    s3 = stack.s3_client()
    campaign = app.campaign()
    add_contacts(app, campaign, 500)
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.delete_bucket(Bucket=BUCKET)  # S3 refuses every upload
    try:
        job_id = app.export_job(campaign, app.user())
        job = processes.wait_for(lambda: finished(app, job_id), 180, "the upload failure")
    finally:
        local_services.create_bucket(stack.s3_endpoint, BUCKET)
    assert job["status"] == "failed"
    assert job["error_message"].startswith("upload to s3://fault-exports/")
    assert job["download_url"] is None

    launched = local_services.graphql(
        stack.graphql, REEXECUTE, {"parentRunId": job["dagster_run_id"]}
    )["data"]["launchRunReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched

    reexecution = launched["run"]["runId"]

    def finished_by_reexecution():
        job = finished(app, job_id)
        return job if job and job["dagster_run_id"] == reexecution else None

    job = processes.wait_for(finished_by_reexecution, 180, "the re-execution", interval=1)
    assert job["status"] == "completed", job["error_message"]
    rows = downloaded_rows(job["download_url"])
    assert len(rows) == job["total_records"] == 500
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"exports/{campaign}/")
    assert [item["Key"] for item in listing.get("Contents", [])] == [job["s3_key"]]


def test_run_terminated_from_the_ui_mid_export_is_canceled_and_leaves_nothing(
    stack, app, spool_dir
):
    s3 = stack.s3_client()
    campaign = app.campaign()
    add_contacts(app, campaign, 2_000)
    locker = psycopg2.connect(stack.env["DATABASE_URL"])
    try:
        locker.cursor().execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
        job_id = app.export_job(campaign, app.user())
        processes.wait_for(lambda: app.job_row(job_id)["status"] == "running", 120, "the run")
        run_id = app.job_row(job_id)["dagster_run_id"]
        worker = processes.wait_for(lambda: run_worker(stack, run_id), 30, "the run worker")
        terminated = local_services.graphql(stack.graphql, TERMINATE, {"runId": run_id})
        assert terminated["data"]["terminateRun"]["__typename"] == "TerminateRunSuccess", terminated
        locker.rollback()  # the extract returns from its wait and meets the interrupt
    finally:
        locker.close()

    def run_status():
        run = local_services.graphql(stack.graphql, RUN_STATUS, {"runId": run_id})
        status = run["data"]["runOrError"]["status"]
        return status if status in ("CANCELED", "FAILURE", "SUCCESS") else None

    assert processes.wait_for(run_status, 60, "the run to end") == "CANCELED"
    job = processes.wait_for(lambda: finished(app, job_id), 60, "the job to end", interval=1)
    assert job["status"] == "cancelled"
    assert job["error_message"] == f"export run {run_id} was cancelled in Dagster"
    assert job["download_url"] is None
    processes.wait_for(lambda: not alive(worker), 30, "the worker to exit")
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"exports/{campaign}/")
    assert listing.get("Contents", []) == []
    assert list(spool_dir.iterdir()) == []
