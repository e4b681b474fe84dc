"""Job states keep up with many failing runs: in an S3 outage, 60 requests fail together
with plain `dagster-daemon run` on deploy/dagster.yaml (Dagster's own launcher; the fast
path's daemon only looks more often), and every export job shows `failed` within 30 s
of its run's end (the run failure sensor's pace; deploy/SCALING.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine

from .conftest import AppData

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
BUCKET = "lag-exports"
REQUESTS = 60
MAX_LAG_SECONDS = 30


@pytest.fixture(scope="module")
def stack(stack_databases, tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    with local_services.local_stack(home, stack_databases("lag"), bucket=BUCKET) as stack:
        yield stack


def test_sixty_runs_failing_together_fail_their_jobs_within_30_s_of_their_end(stack):
    app = AppData(get_engine(stack.env["DATABASE_URL"]))
    campaigns = [app.campaign() for _ in range(REQUESTS)]
    for campaign in campaigns:
        app.contact(campaign, state="completed")
    s3 = stack.s3_client()
    s3.delete_bucket(Bucket=BUCKET)  # the outage: every upload fails
    user = app.user()
    job_ids = [app.export_job(campaign, user) for campaign in campaigns]

    def all_failed():
        with app.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, status, completed_at, dagster_run_id FROM export_jobs "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": job_ids},
            ).all()
        done = [row for row in rows if row.status in ("completed", "failed")]
        return rows if len(done) == REQUESTS else None

    rows = processes.wait_for(all_failed, 900, f"{REQUESTS} jobs to end", interval=1)
    assert {row.status for row in rows} == {"failed"}

    runs = local_services.graphql(
        stack.graphql,
        local_services.RUN_END_TIMES,
        {"runIds": [row.dagster_run_id for row in rows]},
    )["data"]["runsOrError"]["results"]
    end_of = {run["runId"]: run["endTime"] for run in runs}
    assert {run["status"] for run in runs} == {"FAILURE"}
    lags = sorted(
        (row.completed_at - datetime.fromtimestamp(end_of[row.dagster_run_id], UTC)).total_seconds()
        for row in rows
    )
    print(f"run end -> job failed: median {lags[len(lags) // 2]:.1f} s, worst {lags[-1]:.1f} s")
    assert lags[-1] <= MAX_LAG_SECONDS, lags
