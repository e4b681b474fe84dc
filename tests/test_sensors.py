import json
import threading
import time
import uuid

import dagster as dg
import pytest
from sqlalchemy import text

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.pipeline.assets import EXPORT_JOB_TAG
from voicesurvey_exports.pipeline.partitions import campaigns_partitions
from voicesurvey_exports.pipeline.sensors import (
    build_export_requests_sensor,
    campaign_partitions_sensor,
    export_run_canceled_sensor,
)

from .conftest import TEST_BUCKET, AppData, settings_for
from .dagster_harness import export_resources, run_status_sensor_resources


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(sensor, instance, database_url, cursor=None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"app_db": export_resources(database_url)["app_db"]},
    )
    return sensor(context), context


def tick_while_a_request_is_made(sensor, instance, database_url, app_data, after_seconds):
    """A tick, and the id of an export request made (from another thread) after_seconds
    into it."""
    made = []
    request = threading.Timer(
        after_seconds, lambda: made.append(app_data.export_job(app_data.campaign()))
    )
    request.start()
    try:
        result, _ = tick(sensor, instance, database_url)
    finally:
        request.join()
    (job_id,) = made
    return result, job_id


def test_each_pending_job_gets_one_run_keyed_by_job_id(instance, database_url, app_data):
    campaign = app_data.campaign()
    user = app_data.user()
    jobs = [app_data.export_job(campaign, user) for _ in range(3)]
    done = app_data.export_job(campaign, user, status="completed")
    sensor = build_export_requests_sensor(settings_for(database_url))

    result, _ = tick(sensor, instance, database_url)

    assert [r.run_key for r in result.run_requests] == [str(j) for j in jobs]
    assert all(r.partition_key == str(campaign) for r in result.run_requests)
    assert [r.tags[EXPORT_JOB_TAG] for r in result.run_requests] == [str(j) for j in jobs]
    assert str(done) not in {r.run_key for r in result.run_requests}
    added = result.dynamic_partitions_requests[0]
    assert (added.partitions_def_name, list(added.partition_keys)) == ("campaigns", [str(campaign)])


def test_next_tick_does_not_repeat_jobs_waiting_for_their_run(instance, database_url, app_data):
    campaign, user = app_data.campaign(), app_data.user()
    first = app_data.export_job(campaign, user)
    sensor = build_export_requests_sensor(settings_for(database_url))
    result, _ = tick(sensor, instance, database_url)
    assert len(result.run_requests) == 1

    second = app_data.export_job(campaign, user)
    result, _ = tick(sensor, instance, database_url, cursor=result.cursor)

    assert [r.run_key for r in result.run_requests] == [str(second)]
    assert set(json.loads(result.cursor)) == {str(first), str(second)}


def test_started_jobs_leave_the_cursor(instance, database_url, app_data):
    campaign, user = app_data.campaign(), app_data.user()
    job = app_data.export_job(campaign, user)
    sensor = build_export_requests_sensor(settings_for(database_url))
    result, _ = tick(sensor, instance, database_url)
    with app_data.engine.begin() as conn:
        conn.execute(text("UPDATE export_jobs SET status = 'running'"))

    result, _ = tick(sensor, instance, database_url, cursor=result.cursor)

    assert result.run_requests == [] and json.loads(result.cursor) == []
    assert app_data.job_row(job)["status"] == "running"


def test_a_tick_that_finds_nothing_waits_and_launches_a_request_made_meanwhile(
    instance, database_url, app_data
):
    sensor = build_export_requests_sensor(
        settings_for(database_url, EXPORT_SENSOR_WAIT_SECONDS="4")
    )
    began = time.monotonic()
    result, made = tick_while_a_request_is_made(sensor, instance, database_url, app_data, 0.5)

    # The tick launched the request made half a second in, and ended then, not after 4 s.
    assert [r.run_key for r in result.run_requests] == [str(made)]
    assert json.loads(result.cursor) == [str(made)]
    assert time.monotonic() - began < 3


def test_a_tick_that_finds_nothing_ends_after_its_wait_with_no_runs(
    instance, database_url, app_data
):
    sensor = build_export_requests_sensor(
        settings_for(database_url, EXPORT_SENSOR_WAIT_SECONDS="1")
    )
    began = time.monotonic()
    result, _ = tick(sensor, instance, database_url)
    assert result.run_requests == [] and json.loads(result.cursor) == []
    assert time.monotonic() - began >= 0.75


@pytest.mark.parametrize("status", ["NOT_STARTED", "STARTING"])
def test_a_tick_does_not_wait_while_runs_are_queued_or_starting(
    instance, database_url, app_data, status
):
    # The code server's threads that a waiting tick would hold are starting those runs,
    # and a new request would wait behind them anyway: the tick looks once and ends.
    instance.create_run_for_job(
        dg.GraphDefinition(name="noop").to_job(), status=dg.DagsterRunStatus[status]
    )
    sensor = build_export_requests_sensor(
        settings_for(database_url, EXPORT_SENSOR_WAIT_SECONDS="4")
    )
    result, made = tick_while_a_request_is_made(sensor, instance, database_url, app_data, 1.5)

    # Had it waited, it would have launched the request made 1.5 s in.
    assert result.run_requests == [] and json.loads(result.cursor) == []
    assert app_data.job_row(made)["status"] == "pending"


def test_bounded_batch_reaches_newer_jobs_while_older_ones_wait(instance, database_url, app_data):
    campaign, user = app_data.campaign(), app_data.user()
    jobs = [str(app_data.export_job(campaign, user)) for _ in range(5)]
    sensor = build_export_requests_sensor(settings_for(database_url, EXPORT_SENSOR_BATCH_SIZE="2"))

    seen, cursor = [], None
    for _ in range(3):
        result, _ = tick(sensor, instance, database_url, cursor=cursor)
        assert len(result.run_requests) <= 2
        seen += [r.run_key for r in result.run_requests]
        cursor = result.cursor

    assert sorted(seen) == sorted(jobs) and len(seen) == 5


def test_request_for_missing_campaign_fails_that_job_only(instance, postgres_url):
    app_data = AppData(get_engine(postgres_url))
    campaign, user = app_data.campaign(), app_data.user()
    good = app_data.export_job(campaign, user)
    missing = "7c0a6a4e-0000-4000-8000-00000000dead"
    with app_data.engine.begin() as conn:
        # An app schema without the foreign key lets such a row exist.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "INSERT INTO export_jobs (id, campaign_id, status) "
                "VALUES (gen_random_uuid(), :c, 'pending')"
            ),
            {"c": missing},
        )
    result, _ = tick(
        build_export_requests_sensor(settings_for(postgres_url)), instance, postgres_url
    )

    assert [r.run_key for r in result.run_requests] == [str(good)]
    with app_data.engine.connect() as conn:
        status, message = conn.execute(
            text("SELECT status, error_message FROM export_jobs WHERE campaign_id = :c"),
            {"c": missing},
        ).one()
    assert (status, message) == ("failed", f"campaign {missing} does not exist")


def test_campaign_partitions_follow_the_campaigns_table(instance, database_url, app_data):
    first, second = app_data.campaign(), app_data.campaign("B")
    instance.add_dynamic_partitions(campaigns_partitions.name, ["deleted-campaign"])

    result, _ = tick(campaign_partitions_sensor, instance, database_url)

    add, delete = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == sorted([str(first), str(second)])
    assert list(delete.partition_keys) == ["deleted-campaign"]


def test_campaign_partitions_sensor_skips_when_in_step(instance, database_url, app_data):
    campaign = app_data.campaign()
    instance.add_dynamic_partitions(campaigns_partitions.name, [str(campaign)])
    result, _ = tick(campaign_partitions_sensor, instance, database_url)
    assert isinstance(result, dg.SkipReason)


def test_run_cancelled_in_dagster_cancels_its_job_and_deletes_its_file(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    job_id = uuid.uuid4()
    run = instance.create_run_for_job(
        dg.GraphDefinition(name="noop").to_job(), tags={EXPORT_JOB_TAG: str(job_id)}
    )
    key = f"exports/{campaign}/{job_id}.csv"  # uploaded just before the cancellation
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"contact data")
    app_data.export_job(
        campaign,
        app_data.user(),
        id=job_id,
        status="running",
        dagster_run_id=run.run_id,
        s3_key=key,
    )
    instance.report_run_canceled(run)
    with dg.build_run_status_sensor_context(
        sensor_name="export_run_canceled_sensor",
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        dagster_event=dg.DagsterEvent(
            event_type_value="PIPELINE_CANCELED", job_name="noop", message="cancelled"
        ),
        resources=run_status_sensor_resources(database_url),
    ) as context:
        export_run_canceled_sensor(context)

    row = app_data.job_row(job_id)
    assert (row["status"], row["error_message"], row["s3_key"]) == (
        "cancelled",
        f"export run {run.run_id} was cancelled in Dagster",
        None,
    )
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", []) == []


def test_requests_waiting_too_long_fail_the_stuck_requests_sensor_naming_them(
    instance, database_url, app_data
):
    from datetime import UTC, datetime, timedelta

    from voicesurvey_exports.pipeline.sensors import (
        StuckExportRequests,
        build_stuck_requests_sensor,
    )

    sensor = build_stuck_requests_sensor(
        settings_for(
            database_url, EXPORT_PENDING_ALERT_MINUTES="15", EXPORT_RUNNING_ALERT_MINUTES="60"
        )
    )
    campaign, now = app_data.campaign(), datetime.now(UTC)

    def job(status: str, minutes_ago: int) -> uuid.UUID:
        created = now - timedelta(minutes=minutes_ago)
        return app_data.export_job(campaign, None, status=status, created_at=created)

    job("pending", 14)
    job("running", 59)
    job("completed", 500)
    result, _ = tick(sensor, instance, database_url)
    assert isinstance(result, dg.SkipReason)

    stuck_pending = job("pending", 16)
    older_pending = job("pending", 40)
    stuck_running = job("running", 61)
    with pytest.raises(StuckExportRequests) as raised:
        tick(sensor, instance, database_url)
    message = str(raised.value)
    assert message.startswith("export requests stuck: 2 pending over 15 min: ")
    assert "\n" not in message
    # Oldest first, with how long each has waited; then the running ones.
    assert message.index(str(older_pending)) < message.index(str(stuck_pending))
    assert f"{older_pending} (40 min)" in message
    assert f"; 1 running over 60 min: {stuck_running} (61 min)" in message


@pytest.mark.parametrize("operator_value", [None, "7"], ids=["unset", "operator-set"])
def test_run_status_sensors_take_25_finished_runs_a_tick_unless_the_operator_says(
    operator_value,
):
    """Plain `dagster-daemon run` looks at sensors every 5 s: at Dagster's 5 runs a tick,
    60 runs failing together took a minute to show on their jobs."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_RUN_STATUS_SENSOR_PROCESS_LIMIT"}
    if operator_value:
        env["DAGSTER_RUN_STATUS_SENSOR_PROCESS_LIMIT"] = operator_value
    probe = (
        "import os, voicesurvey_exports.pipeline.sensors; "
        "print(os.environ['DAGSTER_RUN_STATUS_SENSOR_PROCESS_LIMIT'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == (operator_value or "25")
