"""The completion webhook against a real HTTP receiver on loopback: signed, retried with
backoff, abandoned when refused or too late, delivered once per job and terminal state,
and durable across separate sensor evaluations (its state is the outbox table)."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import standardwebhooks
from sqlalchemy import text, update

from dev import process_group
from voicesurvey_exports.app_db import export_jobs, notifications
from voicesurvey_exports.app_db.schema import export_notifications
from voicesurvey_exports.pipeline import webhooks
from voicesurvey_exports.pipeline.webhooks import WebhookEndpoint, deliver_due

from .conftest import settings_for
from .dagster_harness import export_resources
from .test_defs import load_defs, strict_warnings  # noqa: F401 - a fixture
from .webhook_receiver import OTHER_SECRET, SECRET, SPEC_KEYS, Receiver

LINK = "https://test-exports.s3.example/exports/x.csv?X-Amz-Signature=deadbeef"


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def completed_job(app_data, campaign=None, total_records=7) -> uuid.UUID:
    """A job ended completed through the pipeline's own transition (which writes its
    notification)."""
    campaign = campaign or app_data.campaign()
    key = f"exports/{campaign}/{uuid.uuid4()}.csv"
    job = app_data.export_job(campaign, status="running", dagster_run_id="run-1", s3_key=key)
    with app_data.engine.begin() as conn:
        assert export_jobs.mark_completed(
            conn,
            job,
            run_id="run-1",
            s3_key=key,
            download_url=LINK,
            url_expires_at=datetime.now(UTC) + timedelta(hours=1),
            total_records=total_records,
        )
    return job


def failed_job(app_data, message="upload failed: S3 said no") -> uuid.UUID:
    job = app_data.export_job(app_data.campaign())
    with app_data.engine.begin() as conn:
        assert export_jobs.mark_failed(conn, job, message)
    return job


def rows(engine) -> list[notifications.Notification]:
    with engine.connect() as conn:
        found = conn.execute(export_notifications.select()).all()
    return sorted(
        (notifications.Notification.from_row(row) for row in found), key=lambda n: n.created_at
    )


def time_passes(engine) -> None:
    """Every waiting retry falls due, as if its backoff had passed."""
    with engine.begin() as conn:
        conn.execute(
            update(export_notifications)
            .where(export_notifications.c.delivered_at.is_(None))
            .values(next_attempt_at=export_notifications.c.created_at)
        )


def deliver(engine, receiver, **options):
    return deliver_due(engine, receiver.url(), SECRET, **options)


def test_receiver_that_first_answers_503_gets_one_signed_delivery(app_data, receiver):
    receiver.fail_first = 3
    job = completed_job(app_data)
    (written,) = rows(app_data.engine)

    for attempt in (1, 2, 3):
        before = datetime.now(UTC)
        (outcome,) = deliver(app_data.engine, receiver)
        after = datetime.now(UTC)
        assert outcome.result == "retry"
        (row,) = rows(app_data.engine)
        # Exponential backoff: 1 s, 2 s, 4 s after the failed attempt.
        wait = timedelta(seconds=2 ** (attempt - 1))
        assert before + wait <= row.next_attempt_at <= after + wait
        assert (row.attempts, row.last_error, row.delivered_at) == (attempt, "HTTP 503", None)
        assert deliver(app_data.engine, receiver) == []  # not due before its backoff ends
        time_passes(app_data.engine)

    (outcome,) = deliver(app_data.engine, receiver)
    assert outcome.result == "delivered"
    assert deliver(app_data.engine, receiver) == []

    assert [r.answered for r in receiver.requests] == [503, 503, 503, 200]
    (ack,) = receiver.acknowledged
    assert ack.signature_valid()
    assert not ack.signature_valid(OTHER_SECRET)
    assert ack.body == written.body.encode()  # the stored bytes exactly
    assert set(ack.json) == SPEC_KEYS
    assert ack.json == {
        "event": "export.completed",
        "job_id": str(job),
        "campaign_id": str(app_data.job_row(job)["campaign_id"]),
        "status": "completed",
        "total_records": 7,
        "error_message": None,
        "occurred_at": export_jobs.iso_utc(app_data.job_row(job)["completed_at"]),
    }
    assert "download" not in ack.body.decode() and "X-Amz" not in ack.body.decode()
    headers = ack.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-VoiceSurvey-Event"] == "export.completed"
    assert headers["User-Agent"].startswith("voicesurvey-exports/")
    # One delivery id across all attempts: the receiver's key for dropping a duplicate.
    assert {r.delivery for r in receiver.requests} == {str(written.id)}
    assert {r.headers["X-VoiceSurvey-Delivery"] for r in receiver.requests} == {str(written.id)}
    assert ack.path == "/hooks/exports?token=query-token-123"
    (row,) = rows(app_data.engine)
    assert row.attempts == 4 and row.delivered_at is not None and row.abandoned_at is None


def test_failed_and_cancelled_jobs_are_announced_with_their_reason(app_data, receiver):
    failed = failed_job(app_data)
    pending = app_data.export_job(app_data.campaign())
    with app_data.engine.begin() as conn:
        assert export_jobs.cancel_pending(conn, pending, "cancelled by its user")

    outcomes = deliver(app_data.engine, receiver)

    assert [o.result for o in outcomes] == ["delivered", "delivered"]
    sent = {r.json["job_id"]: r.json for r in receiver.acknowledged}
    assert sent[str(failed)]["event"] == "export.failed"
    assert sent[str(failed)]["error_message"] == "upload failed: S3 said no"
    assert sent[str(pending)]["event"] == "export.cancelled"
    assert sent[str(pending)]["status"] == "cancelled"
    assert all(set(body) == SPEC_KEYS for body in sent.values())
    assert all(r.signature_valid() for r in receiver.acknowledged)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_other_4xx_abandons_at_once_naming_the_status(app_data, receiver, status):
    receiver.fail_first, receiver.failure = 1, status
    failed_job(app_data)

    (outcome,) = deliver(app_data.engine, receiver)
    time_passes(app_data.engine)

    assert outcome.result == "abandoned"
    (row,) = rows(app_data.engine)
    assert row.abandoned_at is not None and row.delivered_at is None and row.attempts == 1
    assert row.last_error.startswith(f"refused by the receiver: HTTP {status}")
    assert deliver(app_data.engine, receiver) == []
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_timeouts_rate_limits_and_server_errors_are_retried(app_data, receiver, status):
    receiver.fail_first, receiver.failure = 1, status
    failed_job(app_data)

    (first,) = deliver(app_data.engine, receiver)
    time_passes(app_data.engine)
    (second,) = deliver(app_data.engine, receiver)

    assert (first.result, second.result) == ("retry", "delivered")
    assert len(receiver.acknowledged) == 1


def test_unreachable_receiver_is_retried_and_its_error_keeps_no_token(app_data):
    failed_job(app_data)
    closed = f"http://user:pw-secret@127.0.0.1:{process_group.free_port()}/hook?token=tok-777"

    (outcome,) = deliver_due(app_data.engine, closed, SECRET)

    assert outcome.result == "retry"
    (row,) = rows(app_data.engine)
    assert row.attempts == 1 and row.last_error.startswith("connection failed")
    for leak in ("tok-777", "pw-secret", SECRET, "token="):
        assert leak not in row.last_error
        assert leak not in webhooks.describe(outcome, webhooks.redact_url(closed))


def test_a_receiver_that_does_not_answer_in_time_is_retried(app_data, receiver):
    receiver.delay = 1.0
    failed_job(app_data)

    (outcome,) = deliver(app_data.engine, receiver, timeout=0.3)

    assert outcome.result == "retry"
    assert rows(app_data.engine)[0].last_error == "no answer within 0.3 s"


# An attempt's deadline in these tests, and what the clock may add to it on a busy machine.
DEADLINE = 1.0
SLACK = 1.0


def slow_receivers():
    """Every way a receiver can be slow: (what it does, Receiver settings, what the attempt
    comes to). The drips are each shorter than the deadline, so no single read ever times
    out; only a deadline for the whole attempt ends them."""
    for interval in (0.2, 0.6):
        yield (
            f"drips its status line and headers, a byte every {interval} s",
            {"drip": "headers", "drip_interval": interval},
            "retry",
        )
        yield (
            f"drips its 503's headers, a byte every {interval} s",
            {"drip": "headers", "drip_interval": interval, "ok": 503},
            "retry",
        )
        # The status and headers came in time: that is the answer; the body is not read.
        yield (
            f"answers at once, then drips its body, a byte every {interval} s",
            {"drip": "body", "drip_interval": interval},
            "delivered",
        )
    for seconds in (0.3, 2.5):
        outcome = "delivered" if seconds < DEADLINE else "retry"
        yield f"answers after {seconds} s", {"delay": seconds}, outcome
        yield f"accepts the connection after {seconds} s", {"accept_delay": seconds}, outcome


@pytest.mark.parametrize(
    ("behaviour", "settings", "outcome"),
    [pytest.param(*case, id=case[0]) for case in slow_receivers()],
)
def test_an_attempt_ends_by_its_deadline_however_slowly_the_receiver_answers(
    app_data, behaviour, settings, outcome
):
    receiver = Receiver(**settings).start()
    try:
        failed_job(app_data)
        started = time.monotonic()
        (attempt,) = deliver(app_data.engine, receiver, timeout=DEADLINE)
        took = time.monotonic() - started
    finally:
        receiver.stop()

    assert took < DEADLINE + SLACK, f"a receiver that {behaviour} held the attempt {took:.1f} s"
    assert attempt.result == outcome
    if outcome == "retry":
        (row,) = rows(app_data.engine)
        assert row.last_error == f"no answer within {DEADLINE:g} s"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_but_abandons(app_data, status):
    receiver = Receiver(ok=status, location="/elsewhere?token=other-token").start()
    try:
        failed_job(app_data)
        (attempt,) = deliver(app_data.engine, receiver)
    finally:
        receiver.stop()
    assert attempt.result == "abandoned"
    assert attempt.detail == f"refused by the receiver: HTTP {status}"
    assert [request.path for request in receiver.requests] == [
        "/hooks/exports?token=query-token-123"
    ]


def test_retries_end_24_hours_after_the_job_ended(app_data, receiver):
    receiver.fail_first = 10
    failed_job(app_data)
    with app_data.engine.begin() as conn:
        conn.execute(
            update(export_notifications).values(
                created_at=datetime.now(UTC) - timedelta(hours=24, minutes=1), attempts=1439
            )
        )

    (outcome,) = deliver(app_data.engine, receiver)

    assert outcome.result == "abandoned"
    (row,) = rows(app_data.engine)
    assert row.last_error == "gave up after 1440 attempts in 24 h: HTTP 503"
    assert row.abandoned_at is not None and row.delivered_at is None


def test_retry_before_the_window_ends_is_scheduled_no_later_than_its_end(app_data, receiver):
    receiver.fail_first = 10
    failed_job(app_data)
    created = datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=20)
    with app_data.engine.begin() as conn:
        conn.execute(update(export_notifications).values(created_at=created, attempts=20))

    (outcome,) = deliver(app_data.engine, receiver)

    assert outcome.result == "retry"
    assert rows(app_data.engine)[0].next_attempt_at == created + timedelta(hours=24)


def test_notification_older_than_the_window_is_abandoned_unsent(app_data, receiver):
    # E.g. written before the webhook was switched on: never announced a day late.
    failed_job(app_data)
    with app_data.engine.begin() as conn:
        conn.execute(
            update(export_notifications).values(
                created_at=datetime.now(UTC) - timedelta(days=3),
                next_attempt_at=datetime.now(UTC) - timedelta(days=3),
            )
        )

    (outcome,) = deliver(app_data.engine, receiver)

    assert outcome.result == "abandoned" and receiver.requests == []
    assert rows(app_data.engine)[0].last_error == "not sent: older than the 24 h delivery window"


def test_delivered_notifications_are_not_sent_again(app_data, receiver):
    completed_job(app_data)
    failed_job(app_data)
    assert len(deliver(app_data.engine, receiver)) == 2

    time_passes(app_data.engine)
    assert deliver(app_data.engine, receiver) == []

    with app_data.engine.begin() as conn:
        (row, *_) = rows(app_data.engine)
        # Compare-and-set: a finished row changes no more.
        assert not notifications.schedule_retry(
            conn, row.id, attempts=9, next_attempt_at=datetime.now(UTC), last_error="late"
        )
        assert not notifications.abandon(
            conn, row.id, attempts=9, abandoned_at=datetime.now(UTC), last_error="late"
        )
        assert not notifications.mark_delivered(
            conn, row.id, attempts=9, delivered_at=datetime.now(UTC)
        )
    assert len(receiver.requests) == 2
    assert rows(app_data.engine)[0].attempts == 1


def reexecute_and_complete(app_data, job, key) -> None:
    """A re-execution takes the failed job back and completes it (its second end)."""
    with app_data.engine.begin() as conn:
        assert export_jobs.claim_job(conn, job, "run-2", ["failed"])
        assert export_jobs.record_object_key(conn, job, "run-2", key)
        assert export_jobs.mark_completed(
            conn,
            job,
            run_id="run-2",
            s3_key=key,
            download_url=LINK,
            url_expires_at=datetime.now(UTC) + timedelta(hours=1),
            total_records=3,
        )


def test_job_failed_then_reexecuted_and_completed_gets_one_of_each_event(app_data, receiver):
    campaign = app_data.campaign()
    job = app_data.export_job(campaign)
    key = f"exports/{campaign}/{job}.csv"
    with app_data.engine.begin() as conn:
        assert export_jobs.claim_job(conn, job, "run-1", ["pending"])
        assert export_jobs.mark_failed(conn, job, "S3 was down", run_id="run-1")
        # A second failure event for the same end (a late sensor) announces nothing more.
        assert not export_jobs.mark_failed(conn, job, "S3 was down", run_id="run-1")
    assert len(deliver(app_data.engine, receiver)) == 1
    reexecute_and_complete(app_data, job, key)

    assert len(deliver(app_data.engine, receiver)) == 1
    time_passes(app_data.engine)
    assert deliver(app_data.engine, receiver) == []

    sent = receiver.acknowledged_by_job_and_event()
    assert sorted(sent) == [(str(job), "export.completed"), (str(job), "export.failed")]
    assert all(len(requests) == 1 for requests in sent.values())
    assert len({r.delivery for r in receiver.acknowledged}) == 2


def test_a_tick_stops_after_its_limit_and_goes_on_oldest_first(app_data, receiver):
    jobs = [failed_job(app_data, f"reason {i}") for i in range(5)]
    start = datetime.now(UTC) - timedelta(minutes=1)
    with app_data.engine.begin() as conn:  # SQLite's now() has one-second resolution
        for i, job in enumerate(jobs):
            conn.execute(
                update(export_notifications)
                .where(export_notifications.c.export_job_id == job)
                .values(created_at=start + timedelta(seconds=i), next_attempt_at=start)
            )

    first = deliver(app_data.engine, receiver, limit=2)
    rest = deliver(app_data.engine, receiver, limit=10)

    assert [len(first), len(rest)] == [2, 3]
    assert [r.json["job_id"] for r in receiver.acknowledged] == [str(j) for j in jobs]


def test_a_tick_stops_when_its_time_is_up(app_data, receiver):
    receiver.delay = 0.5
    for i in range(4):
        failed_job(app_data, f"reason {i}")

    outcomes = deliver(app_data.engine, receiver, budget_seconds=0.75)

    assert len(outcomes) == 2  # the second started within the budget, the third did not


@pytest.mark.postgres
def test_two_senders_at_once_send_each_notification_once(postgres_url, receiver):
    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    for i in range(12):
        failed_job(app_data, f"reason {i}")
    receiver.delay = 0.05
    barrier = threading.Barrier(3)
    results: list[list] = []

    def sender():
        barrier.wait()
        results.append(deliver(app_data.engine, receiver))

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sum(len(r) for r in results) == 12
    assert len(receiver.requests) == 12
    assert len({r.delivery for r in receiver.requests}) == 12


# The sensor, as the daemon evaluates it: each evaluation a fresh context and resources,
# as after a restart of the daemon or the code server.


def evaluate(sensor, database_url: str, url: str):
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "app_db": export_resources(database_url)["app_db"],
            "webhook": WebhookEndpoint(url=url, secret=SECRET),
        },
    ) as context:
        return sensor(context)


def test_sensor_delivers_after_a_restart_what_it_could_not_before(database_url, app_data):
    receiver = Receiver()
    receiver.start()
    url = receiver.url()
    receiver.stop()  # down: connections refused
    job = completed_job(app_data)
    settings = settings_for(database_url, EXPORT_WEBHOOK_URL=url, EXPORT_WEBHOOK_SECRET=SECRET)
    (sensor,) = webhooks.build_export_webhook_sensors(settings)
    assert sensor.name == "export_webhook_sensor" and sensor.minimum_interval_seconds == 2
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    down = evaluate(sensor, database_url, url)
    assert down.skip_message == "webhook notifications: 1 retry"

    receiver.start()  # up again, on the same port
    try:
        time_passes(app_data.engine)
        up = evaluate(sensor, database_url, url)
        assert up.skip_message == "webhook notifications: 1 delivered"
        time_passes(app_data.engine)
        assert evaluate(sensor, database_url, url).skip_message == "no webhook notification due"
    finally:
        receiver.stop()
    (ack,) = receiver.acknowledged
    assert ack.json["job_id"] == str(job) and ack.signature_valid()
    assert ack.json["event"] == "export.completed"


def test_no_sensor_and_no_webhook_resource_without_a_url(sqlite_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)  # the module builds its defs on import
    from voicesurvey_exports.pipeline.definitions import build_defs

    settings = settings_for(sqlite_url)
    assert webhooks.build_export_webhook_sensors(settings) == []
    repository = build_defs(settings).get_repository_def()
    assert "export_webhook_sensor" not in {s.name for s in repository.sensor_defs}
    assert "webhook" not in repository.get_top_level_resources()


# Dagster's own snapshot code reads a deprecated property of the schedule.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dagster_ui_shows_the_variable_names_never_the_secret_or_token(monkeypatch):
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._serdes import serialize_value

    url = "http://127.0.0.1:9/hooks/exports?token=query-token-123"
    monkeypatch.setenv("DATABASE_URL", "sqlite:///unused.db")
    from voicesurvey_exports.pipeline.definitions import build_defs

    monkeypatch.setenv("EXPORT_WEBHOOK_URL", url)
    monkeypatch.setenv("EXPORT_WEBHOOK_SECRET", SECRET)
    settings = settings_for(
        "sqlite:///unused.db", EXPORT_WEBHOOK_URL=url, EXPORT_WEBHOOK_SECRET=SECRET
    )
    repository = build_defs(settings).get_repository_def()
    assert "export_webhook_sensor" in {s.name for s in repository.sensor_defs}

    shown = serialize_value(RepositorySnap.from_def(repository))  # what the UI is sent

    assert "EXPORT_WEBHOOK_SECRET" in shown and "EXPORT_WEBHOOK_URL" in shown
    assert SECRET not in shown and "query-token-123" not in shown


def test_stored_error_text_loses_url_user_info_and_query(app_data):
    failed_job(app_data)
    (row,) = rows(app_data.engine)
    with app_data.engine.begin() as conn:
        notifications.schedule_retry(
            conn,
            row.id,
            attempts=1,
            next_attempt_at=datetime.now(UTC),
            last_error="failed:\nhttps://u:p@hooks.example/x?sig=abc#f and more",
        )
        stored = conn.execute(text("SELECT last_error FROM export_notifications")).scalar_one()
    assert stored == "failed: https://hooks.example/x and more"


def test_every_attempt_is_signed_the_standard_webhooks_way_with_its_own_timestamp(
    app_data, receiver
):
    receiver.fail_first = 1
    failed_job(app_data)
    (written,) = rows(app_data.engine)
    before = int(time.time())
    deliver(app_data.engine, receiver)
    time_passes(app_data.engine)
    time.sleep(1.1)  # the second attempt's timestamp is a later second
    deliver(app_data.engine, receiver)
    after = int(time.time())

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(written.id)
    stamps = [int(r.headers["webhook-timestamp"]) for r in (first, second)]
    assert before <= stamps[0] < stamps[1] <= after
    for request in (first, second):
        signature = request.headers["webhook-signature"]
        assert signature.startswith("v1,") and " " not in signature
        parsed = standardwebhooks.Webhook(SECRET).verify(request.body, dict(request.headers))
        assert parsed["status"] == "failed"
    # One attempt's signature does not vouch for another's timestamp (no replay by
    # moving a captured delivery's time forward).
    forged = dict(second.headers) | {"webhook-signature": first.headers["webhook-signature"]}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(second.body, forged)


def test_during_a_rotation_every_secret_signs_and_either_verifies(app_data, receiver):
    failed_job(app_data)
    deliver_due(app_data.engine, receiver.url(), f"{OTHER_SECRET} {SECRET}")

    (ack,) = receiver.acknowledged
    assert len(ack.headers["webhook-signature"].split(" ")) == 2
    assert ack.signature_valid(SECRET) and ack.signature_valid(OTHER_SECRET)
    retired = "whsec_" + base64.b64encode(b"retired-webhook-key-0123456789ab").decode()
    assert not ack.signature_valid(retired)


def test_a_raw_secret_signs_as_its_utf8_bytes_and_keeps_the_legacy_header(app_data, receiver):
    raw = "a-raw-seed-secret-0123456789"
    failed_job(app_data)
    deliver_due(app_data.engine, receiver.url(), raw)

    (ack,) = receiver.acknowledged
    standardwebhooks.Webhook(raw.encode()).verify(ack.body, dict(ack.headers))
    assert ack.legacy_signature_valid(raw.encode())  # what the seed's receivers check
    assert not ack.legacy_signature_valid(b"another-raw-secret-0123")
    assert ack.headers["X-VoiceSurvey-Event"] == "export.failed"


def test_the_docs_receiver_snippet_accepts_a_delivery_and_rejects_forgeries_and_replays(
    app_data, receiver
):
    guide = (Path(__file__).resolve().parents[1] / "docs" / "webhooks.md").read_text()
    snippet = guide.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet, namespace)  # the app's code, as documented
    verified_event = namespace["verified_event"]
    failed_job(app_data)
    deliver(app_data.engine, receiver)
    (ack,) = receiver.acknowledged
    headers = dict(ack.headers)

    assert verified_event(ack.body, headers, SECRET)["status"] == "failed"
    assert verified_event(ack.body + b" ", headers, SECRET) is None
    assert verified_event(ack.body, headers, OTHER_SECRET) is None
    assert verified_event(ack.body, {"content-type": "application/json"}, SECRET) is None
    # A captured delivery replayed later: its signature is right, its timestamp too old.
    old = int(time.time()) - 600
    keys = [base64.b64decode(SECRET.removeprefix("whsec_"))]
    replayed = headers | {
        "webhook-timestamp": str(old),
        "webhook-signature": webhooks.standard_signature(ack.delivery, old, ack.body, keys),
    }
    assert verified_event(ack.body, replayed, SECRET) is None


@pytest.mark.usefixtures("strict_warnings")
def test_definitions_with_the_webhook_load_without_deprecated_calls(monkeypatch):
    defs = load_defs(
        monkeypatch,
        EXPORT_WEBHOOK_URL="https://app.example.com/hooks/exports",
        EXPORT_WEBHOOK_SECRET=SECRET,
    )
    dg.Definitions.validate_loadable(defs)
    sensor = defs.get_repository_def().get_sensor_def("export_webhook_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 2


def test_a_jobs_later_event_waits_for_its_earlier_one(app_data, receiver):
    """Failed, then re-executed and completed while the failure was still being retried:
    the receiver must not hear "completed" before "failed" (it would keep the wrong one)."""
    campaign = app_data.campaign()
    job = app_data.export_job(campaign)
    key = f"exports/{campaign}/{job}.csv"
    receiver.fail_first = 1
    with app_data.engine.begin() as conn:
        assert export_jobs.claim_job(conn, job, "run-1", ["pending"])
        assert export_jobs.mark_failed(conn, job, "S3 was down", run_id="run-1")
    assert [o.result for o in deliver(app_data.engine, receiver)] == ["retry"]
    reexecute_and_complete(app_data, job, key)

    assert deliver(app_data.engine, receiver) == []  # the failure's retry is not due yet
    time_passes(app_data.engine)
    assert [o.notification.event for o in deliver(app_data.engine, receiver)] == [
        "export.failed",
        "export.completed",
    ]
    assert [r.json["event"] for r in receiver.acknowledged] == ["export.failed", "export.completed"]


def test_a_notification_another_sender_holds_is_not_sent_until_its_lease_ends(app_data, receiver):
    failed_job(app_data)
    (row,) = rows(app_data.engine)
    with app_data.engine.begin() as conn:  # a sender that died mid-attempt
        assert notifications.lease(conn, row, until=datetime.now(UTC) + webhooks.LEASE)
        assert not notifications.lease(conn, row, until=datetime.now(UTC))  # taken: CAS
    assert deliver(app_data.engine, receiver) == []
    assert receiver.requests == []

    time_passes(app_data.engine)  # the lease ran out
    assert [o.result for o in deliver(app_data.engine, receiver)] == ["delivered"]
    assert len(receiver.acknowledged) == 1


def test_a_url_urllib_cannot_send_is_a_retried_attempt_not_a_failed_tick(app_data):
    failed_job(app_data)
    (outcome,) = deliver_due(app_data.engine, "https://hooks.example/hooké?token=t0k", SECRET)
    assert outcome.result == "retry"
    assert "t0k" not in outcome.detail and SECRET not in outcome.detail
