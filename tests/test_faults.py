"""Faults with the real daemon: a run worker killed mid-export ends in a failed job."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psycopg2
import pytest

from voicesurvey_exports import local_services
from voicesurvey_exports import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade

from .conftest import AppData

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[1]
BUCKET = "fault-exports"
# README, "Failure behaviour": run monitoring polls every 30 s, then the failure sensor.
KILLED_RUN_BOUND_SECONDS = 90


def run_workers(daemon_pgid: int) -> list[int]:
    """The daemon's run worker processes: its code server starts each run in a spawned
    Python process (multiprocessing), in the daemon's process group."""
    return [
        pid
        for pid, command in processes.group_members(daemon_pgid)
        if "multiprocessing" in command or "execute_run" in command
    ]


def test_run_worker_killed_mid_export_fails_the_job_within_the_bound(
    create_postgres_database, tmp_path
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    s3_port = processes.free_port()
    app_url = create_postgres_database("fault_app")
    upgrade(get_engine(app_url))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": create_postgres_database("fault_dagster"),
        "DATABASE_URL": app_url,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        **local_services.LOCAL_CREDENTIALS,
        "S3_BUCKET_NAME": BUCKET,
        "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
    }
    app = AppData(get_engine(app_url))
    campaign = app.campaign()
    app.contact(campaign, "completed")
    started = []
    locker = psycopg2.connect(app_url)
    try:
        started.append(local_services.start_s3_server(s3_port, home / "moto.log", env))
        local_services.create_bucket(env["AWS_ENDPOINT_URL"], BUCKET)
        started += local_services.start_dagster(home, env, REPO)
        # The extract waits on this lock, so the run is mid-export when it is killed.
        locker.cursor().execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
        job_id = app.export_job(campaign, app.user())

        processes.wait_for(lambda: app.job_row(job_id)["status"] == "running", 120, "the run")
        daemon = started[1]
        workers = processes.wait_for(lambda: run_workers(daemon.pid), 30, "the run worker")
        killed_at = time.monotonic()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        locker.rollback()

        processes.wait_for(
            lambda: app.job_row(job_id)["status"] == "failed",
            KILLED_RUN_BOUND_SECONDS + 60,
            "the killed run's job to fail",
            interval=1,
        )
        elapsed = time.monotonic() - killed_at
    finally:
        locker.close()
        processes.stop_all(started)

    job = app.job_row(job_id)
    assert elapsed <= KILLED_RUN_BOUND_SECONDS, elapsed
    assert job["error_message"] and "\n" not in job["error_message"]
    assert job["download_url"] is None
