"""The completion webhook through the real daemon (root dagster.yaml, PostgreSQL for the
app and the instance, a moto S3 server): a receiver in this test process that first
answers 503 ends with exactly one acknowledged, correctly signed delivery per job and
terminal state, and a notification left undelivered when the daemon stops is delivered
once it runs again."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db import export_jobs, notifications
from voicesurvey_exports.app_db.engine import get_engine

from .conftest import AppData
from .webhook_receiver import SECRET, SPEC_KEYS, Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
BUCKET = "webhook-exports"
TERMINAL = ("completed", "failed", "cancelled")


def request_export(app: AppData, campaign, user) -> uuid.UUID:
    job_id = uuid.uuid4()
    with app.engine.begin() as conn:  # exactly what the app does
        conn.execute(
            text(
                "INSERT INTO export_jobs (id, campaign_id, requested_by_user_id) "
                "VALUES (:id, :campaign, :user)"
            ),
            {"id": job_id, "campaign": campaign, "user": user},
        )
    return job_id


def statuses(app: AppData, job_ids) -> dict[uuid.UUID, str]:
    return {job: app.job_row(job)["status"] for job in job_ids}


def refuse_completion_of(app: AppData, campaign) -> None:
    """The database refuses to record this campaign's export as completed: its run fails,
    and the failure sensor fails its job."""
    with app.engine.begin() as conn:
        conn.execute(
            text("""
            CREATE FUNCTION webhook_refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected: completion refused'; END $$
        """)
        )
        conn.execute(
            text(f"""
            CREATE TRIGGER webhook_refuse_completion BEFORE UPDATE ON export_jobs FOR EACH ROW
            WHEN (NEW.status = 'completed' AND NEW.campaign_id = '{campaign}')
            EXECUTE FUNCTION webhook_refuse_completion()
        """)
        )


def assert_one_signed_delivery_each(receiver: Receiver, expected: dict[tuple[str, str], str]):
    """Exactly one acknowledged delivery per (job, event), each signed with the secret and
    carrying the spec's keys only, the job's status, and no link."""
    sent = receiver.acknowledged_by_job_and_event()
    assert {key: len(requests) for key, requests in sent.items()} == dict.fromkeys(expected, 1)
    for (job_id, event), (request,) in sent.items():
        assert request.signature_valid()
        assert request.headers["X-VoiceSurvey-Event"] == event
        body = request.json
        assert set(body) == SPEC_KEYS
        assert body["status"] == expected[(job_id, event)]
        assert "http" not in request.body.decode() and "X-Amz" not in request.body.decode()
    # Every attempt of a notification carried the same delivery id and the same body.
    by_delivery: dict[str, set[bytes]] = {}
    for request in receiver.requests:
        by_delivery.setdefault(request.delivery, set()).add(request.body)
    assert all(len(bodies) == 1 for bodies in by_delivery.values())


def test_receiver_that_first_answers_503_gets_one_signed_delivery_per_job_through_the_daemon(
    stack_databases, tmp_path
):
    receiver = Receiver(fail_first=5).start()
    settings = {
        **stack_databases("webhook"),
        "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
        "EXPORT_WEBHOOK_URL": receiver.url(),
        "EXPORT_WEBHOOK_SECRET": SECRET,
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    try:
        with local_services.local_stack(home, settings, bucket=BUCKET, webserver=False) as stack:
            app = AppData(get_engine(settings["DATABASE_URL"]))
            manager = app.user("campaign_manager")
            campaigns = [app.campaign(f"Webhook {i}") for i in range(4)]
            for i, campaign in enumerate(campaigns):
                for _ in range(i + 1):
                    app.contact(campaign, "completed")
            refuse_completion_of(app, campaigns[3])
            jobs = [request_export(app, campaign, manager) for campaign in campaigns]

            processes.wait_for(
                lambda: all(s in TERMINAL for s in statuses(app, jobs).values()),
                300,
                "four export jobs to end",
                interval=1,
            )
            ended = statuses(app, jobs)
            assert list(ended.values()) == ["completed", "completed", "completed", "failed"]
            expected = {(str(job), f"export.{status}"): status for job, status in ended.items()}
            processes.wait_for(
                lambda: set(receiver.acknowledged_by_job_and_event()) == set(expected),
                120,
                "a delivery of each job's end",
                interval=1,
            )
            # The first five answers were 503: some notification was retried.
            assert [r.answered for r in receiver.requests[:5]] == [503] * 5
            assert len(receiver.requests) > len(expected)

            # The receiver goes down; a job ends; its notification fails an attempt.
            receiver.stop()
            late = request_export(app, campaigns[0], manager)
            processes.wait_for(
                lambda: _attempts(app, late) >= 1, 120, "an attempt at the late job's webhook"
            )
            processes.stop_all([stack.daemon])
            # While the daemon is down, a request is cancelled (the app's own transition).
            cancelled = request_export(app, campaigns[1], manager)
            with app.engine.begin() as conn:
                assert export_jobs.cancel_pending(conn, cancelled, "cancelled by its user")
            assert _delivered(app, late) is False and _delivered(app, cancelled) is False

            receiver.start()  # up again, on the same port
            restarted = local_services.start_dagster(
                home, stack.env, stack.workspace_dir, daemon=stack.instance.daemon
            )
            stack.processes += restarted
            stack.daemon = restarted[0]
            processes.wait_for(
                lambda: _delivered(app, late) and _delivered(app, cancelled),
                180,
                "delivery after the daemon's restart",
                interval=1,
            )
            expected[(str(late), "export.completed")] = "completed"
            expected[(str(cancelled), "export.cancelled")] = "cancelled"
            time.sleep(6)  # a few more ticks: nothing is sent twice
            assert_one_signed_delivery_each(receiver, expected)
            assert "injected: completion refused" in app.job_row(jobs[3])["error_message"]
    finally:
        receiver.stop()


def _notification(app: AppData, job_id) -> notifications.Notification | None:
    with app.engine.connect() as conn:
        found = notifications.of_job(conn, job_id)
    return found[-1] if found else None


def _attempts(app: AppData, job_id) -> int:
    notification = _notification(app, job_id)
    return notification.attempts if notification else 0


def _delivered(app: AppData, job_id) -> bool:
    notification = _notification(app, job_id)
    return notification is not None and notification.delivered_at is not None
