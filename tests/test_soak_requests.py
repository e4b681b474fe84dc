"""Soak: requests that pile up while the daemon is down are each exported exactly once
when it starts, also when the request sensor's cursor is reset halfway."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import Counter

import pytest
from dagster import DagsterInstance
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.pipeline.assets import EXPORT_JOB_TAG

from .conftest import AppData

pytestmark = [pytest.mark.soak, pytest.mark.e2e, pytest.mark.postgres]
BUCKET = "soak-exports"
# 200 in CI (`make soak`; 300 until CI ran on 2026-12-07's slower machine kind);
# SOAK_REQUESTS=500 for the longer soak, SOAK_REQUESTS=30 for a quick local check. On the
# fast path: what is soaked is the request sensor's exactly-once (run keys, a reset
# cursor), which both instance files share, and a new Python process per run would make
# the same runs cost some 11 CPU-minutes. The default launcher gets its queued runs in
# test_deploy's soak.
REQUESTS = int(os.environ.get("SOAK_REQUESTS", "200"))


def test_requests_made_while_the_daemon_is_down_are_each_exported_exactly_once(
    stack_databases, tmp_path, monkeypatch
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    settings = {
        **stack_databases("soak"),
        "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
        "EXPORT_SENSOR_BATCH_SIZE": "25",
    }
    app = AppData(get_engine(settings["DATABASE_URL"]))
    manager = app.user()
    campaigns = [app.campaign(f"Soak {i}") for i in range(max(1, REQUESTS // 10))]
    for campaign in campaigns:
        app.contact(campaign, "completed")
    with app.engine.begin() as conn:  # all arrive while no daemon runs
        for i in range(REQUESTS):
            conn.execute(
                text(
                    "INSERT INTO export_jobs (id, campaign_id, requested_by_user_id) "
                    "VALUES (:id, :campaign, :user)"
                ),
                {"id": uuid.uuid4(), "campaign": campaigns[i % len(campaigns)], "user": manager},
            )

    def completed() -> int:
        with app.engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM export_jobs WHERE status = 'completed'")
            ).scalar_one()

    with local_services.local_stack(
        home, settings, bucket=BUCKET, webserver=False, instance=local_services.SINGLE_NODE
    ) as stack:
        processes.wait_for(
            lambda: completed() >= REQUESTS // 3, 3600, "a third of the jobs", interval=3
        )
        # An operator resets the sensor's cursor: run keys must still prevent repeats.
        subprocess.run(
            [
                str(local_services.BIN / "dagster"),
                "sensor",
                "cursor",
                "export_requests_sensor",
                "--delete",
                "-w",
                "workspace.yaml",
            ],
            env=stack.env,
            cwd=stack.workspace_dir,
            check=True,
            capture_output=True,
            input=b"y\n",
            timeout=120,
        )
        processes.wait_for(lambda: completed() == REQUESTS, 3600, "every job", interval=3)

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", settings["DAGSTER_POSTGRES_URL"])
    with DagsterInstance.from_config(str(home)) as instance:
        runs = [  # the export runs (the daily retention schedule may fire meanwhile)
            record.dagster_run
            for record in instance.get_run_records()
            if record.dagster_run.job_name == "campaign_export_job"
        ]
    runs_per_job = Counter(run.tags[EXPORT_JOB_TAG] for run in runs)
    with app.engine.connect() as conn:
        jobs = conn.execute(text("SELECT id::text, status, s3_key FROM export_jobs")).all()
    assert len(runs) == REQUESTS and set(runs_per_job.values()) == {1}
    assert set(runs_per_job) == {job.id for job in jobs}
    assert {job.status for job in jobs} == {"completed"}
    assert len({job.s3_key for job in jobs}) == REQUESTS  # each request its own file
