"""Recurring exports in the pipeline: due times become jobs exactly once (the schedules
sensor), and incremental deliveries hold exactly what changed since the last completed one,
whatever commits while an export runs."""

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import select, text, update

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.export_jobs import get_job
from voicesurvey_exports.app_db.schema import (
    contacts,
    export_jobs,
    export_schedules,
    survey_responses,
    users,
)
from voicesurvey_exports.app_db.times import iso_utc
from voicesurvey_exports.pipeline.schedule_sensor import (
    build_export_schedules_sensor,
    record_due_deliveries,
)
from voicesurvey_exports.pipeline.sensors import build_export_requests_sensor
from voicesurvey_exports.service.schedules import ExportSchedules

from .conftest import TEST_BUCKET, AppData, request_api, settings_for
from .dagster_harness import export_resources, materialize_export, run_failure_sensor

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def jobs_of(engine, schedule_id) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(export_jobs)
            .where(export_jobs.c.schedule_id == schedule_id)
            .order_by(export_jobs.c.due_at)
        )
        return [dict(row._mapping) for row in rows]


def schedule_row(engine, schedule_id) -> dict:
    with engine.connect() as conn:
        row = conn.execute(
            select(export_schedules).where(export_schedules.c.id == schedule_id)
        ).one()
        return dict(row._mapping)


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.fixture
def scheduled(app_data):
    """A campaign manager's campaign with a daily 06:00 UTC schedule made long ago."""
    manager = app_data.user("campaign_manager")
    campaign = app_data.campaign()
    schedule = app_data.schedule(campaign, manager, created_at=LONG_AGO)
    return manager, campaign, schedule


def test_a_due_time_makes_one_job_however_often_it_is_evaluated(engine, scheduled):
    manager, campaign, schedule = scheduled
    now = datetime(2026, 1, 2, 6, 0, 30, tzinfo=UTC)
    made = record_due_deliveries(engine, "role", now)
    assert len(made) == 1
    assert record_due_deliveries(engine, "role", now) == []  # a repeated tick
    # A restart that lost everything but the database, even last_due_at: the unique
    # (schedule_id, due_at) still refuses a second job.
    with engine.begin() as conn:
        conn.execute(update(export_schedules).values(last_due_at=None))
    assert record_due_deliveries(engine, "role", now + timedelta(seconds=20)) == []
    [job] = jobs_of(engine, schedule)
    assert job["status"] == "pending"
    assert job["requested_by_user_id"] == manager and job["campaign_id"] == campaign
    assert utc(job["due_at"]) == datetime(2026, 1, 2, 6, 0, tzinfo=UTC)
    assert (job["bom"], job["compression"]) == (False, "none")


def test_after_downtime_only_the_latest_missed_due_time_is_delivered(engine, scheduled):
    _, _, schedule = scheduled
    record_due_deliveries(engine, "role", datetime(2026, 1, 2, 6, 1, tzinfo=UTC))
    with engine.begin() as conn:
        conn.execute(update(export_jobs).values(status="completed"))
    # Down from the 2nd to the 5th at 07:00: the 3rd's, 4th's and 5th's due times passed.
    record_due_deliveries(engine, "role", datetime(2026, 1, 5, 7, 0, tzinfo=UTC))
    assert [utc(job["due_at"]).day for job in jobs_of(engine, schedule)] == [2, 5]
    assert utc(schedule_row(engine, schedule)["last_due_at"]) == datetime(
        2026, 1, 5, 6, 0, tzinfo=UTC
    )


def test_a_due_time_waits_while_the_previous_delivery_is_open(engine, scheduled):
    _, _, schedule = scheduled
    record_due_deliveries(engine, "role", datetime(2026, 1, 2, 6, 1, tzinfo=UTC))
    [first] = jobs_of(engine, schedule)
    with engine.begin() as conn:  # its run is still at work a day later
        conn.execute(update(export_jobs).values(status="running"))
    assert record_due_deliveries(engine, "role", datetime(2026, 1, 3, 6, 1, tzinfo=UTC)) == []
    with engine.begin() as conn:
        conn.execute(update(export_jobs).values(status="completed"))
    record_due_deliveries(engine, "role", datetime(2026, 1, 3, 7, 0, tzinfo=UTC))
    assert [utc(job["due_at"]).day for job in jobs_of(engine, schedule)] == [2, 3]


def test_the_cron_is_read_in_the_schedules_time_zone(engine, app_data):
    manager, campaign = app_data.user(), app_data.campaign()
    schedule = app_data.schedule(
        campaign, manager, cron="0 6 * * 1-5", time_zone="Europe/Rome", created_at=LONG_AGO
    )
    # Friday 3 July 2026, 05:00 UTC: 07:00 in Rome (summer time), due at 06:00 Rome.
    record_due_deliveries(engine, "role", datetime(2026, 7, 3, 5, 0, tzinfo=UTC))
    # Sunday: the latest weekday due time is Friday's, which has its job.
    record_due_deliveries(engine, "role", datetime(2026, 7, 5, 5, 0, tzinfo=UTC))
    assert [utc(job["due_at"]) for job in jobs_of(engine, schedule)] == [
        datetime(2026, 7, 3, 4, 0, tzinfo=UTC)
    ]


def test_a_due_time_makes_a_job_with_the_schedules_export_options(engine, app_data):
    manager, campaign = app_data.user(), app_data.campaign()
    options = {
        "bom": False,
        "compression": "none",
        "format": "parquet",
        "outcomes": ["refused", "not_reached"],
        "attempted_from": "2026-01-01T00:00:00Z",
        "attempted_to": None,
        "time_zone": "Europe/Rome",
    }
    schedule = app_data.schedule(campaign, manager, options=options, created_at=LONG_AGO)
    record_due_deliveries(engine, "role", datetime(2026, 1, 2, 6, 1, tzinfo=UTC))
    [job] = jobs_of(engine, schedule)
    with engine.connect() as conn:
        shown = get_job(conn, job["id"]).options
    assert shown == {**options, "attempted_from": "2026-01-01T00:00:00Z"}


def test_a_schedule_is_not_due_before_it_existed(engine, app_data):
    manager, campaign = app_data.user(), app_data.campaign()
    created = datetime(2026, 1, 2, 6, 0, 30, tzinfo=UTC)
    schedule = app_data.schedule(campaign, manager, created_at=created)
    assert record_due_deliveries(engine, "role", created + timedelta(minutes=5)) == []
    assert jobs_of(engine, schedule) == []


def test_disabled_and_deleted_schedules_make_no_job(engine, app_data, s3_client):
    manager, campaign = app_data.user(), app_data.campaign()
    disabled = app_data.schedule(campaign, manager, created_at=LONG_AGO, enabled=False)
    deleted = app_data.schedule(campaign, manager, created_at=LONG_AGO)
    ExportSchedules(request_api(engine, s3_client)).delete_schedule(deleted, manager)
    assert record_due_deliveries(engine, "role", datetime(2026, 1, 2, 7, tzinfo=UTC)) == []
    assert jobs_of(engine, disabled) == jobs_of(engine, deleted) == []


def test_a_schedule_whose_creator_lost_the_role_fails_its_due_time_and_is_disabled(
    engine, scheduled
):
    manager, campaign, schedule = scheduled
    with engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == manager).values(role="viewer"))
    record_due_deliveries(engine, "role", datetime(2026, 1, 2, 6, 1, tzinfo=UTC))
    [job] = jobs_of(engine, schedule)
    reason = (
        f"export schedule {schedule} can no longer run: user {manager} has role viewer; "
        "exports need role campaign_manager or admin"
    )
    assert (job["status"], job["error_message"]) == ("failed", reason)
    row = schedule_row(engine, schedule)
    assert (row["enabled"], row["disabled_reason"]) == (False, reason)
    # Disabled: later due times make nothing.
    assert record_due_deliveries(engine, "role", datetime(2026, 1, 3, 6, 1, tzinfo=UTC)) == []


def test_a_schedule_whose_stored_cron_is_not_valid_fails_and_others_still_run(engine, app_data):
    manager, campaign = app_data.user(), app_data.campaign()
    broken = app_data.schedule(campaign, manager, cron="0 6 * *", created_at=LONG_AGO)
    working = app_data.schedule(campaign, manager, created_at=LONG_AGO)
    record_due_deliveries(engine, "role", datetime(2026, 1, 2, 6, 1, 30, tzinfo=UTC))
    [failed] = jobs_of(engine, broken)
    assert failed["status"] == "failed"
    assert failed["error_message"] == (
        f"export schedule {broken} can no longer run: cron '0 6 * *' must have five fields: "
        "minute hour day-of-month month day-of-week"
    )
    assert schedule_row(engine, broken)["enabled"] is False
    assert [job["status"] for job in jobs_of(engine, working)] == ["pending"]


def test_under_the_owner_policy_a_schedule_of_someone_elses_campaign_is_disabled(engine, app_data):
    owner, other = app_data.user(), app_data.user()
    campaign = app_data.campaign(created_by_user_id=owner)
    schedule = app_data.schedule(campaign, other, created_at=LONG_AGO)
    record_due_deliveries(engine, "owner", datetime(2026, 1, 2, 6, 1, tzinfo=UTC))
    [job] = jobs_of(engine, schedule)
    assert job["status"] == "failed"
    assert "is not one of your campaigns" in job["error_message"]


def test_sensor_ticks_make_one_job_that_the_request_sensor_launches(
    instance, database_url, app_data
):
    manager, campaign = app_data.user(), app_data.campaign()
    schedule = app_data.schedule(campaign, manager, cron="* * * * *", created_at=LONG_AGO)
    settings = settings_for(database_url)
    resources = {"app_db": export_resources(database_url)["app_db"]}
    sensor = build_export_schedules_sensor(settings)
    first = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert "1 deliveries recorded" in first.skip_message
    again = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    # A restart: a new context (the sensor keeps no cursor; the database is its state).
    with dg.instance_for_test() as restarted:
        sensor(dg.build_sensor_context(instance=restarted, resources=resources))
    engine = get_engine(database_url)
    jobs = jobs_of(engine, schedule)
    assert len(jobs) == 1 or (  # unless the minute turned between the ticks
        len(jobs) == 2 and "1 deliveries recorded" in (again.skip_message or "")
    )
    launched = build_export_requests_sensor(settings)(
        dg.build_sensor_context(instance=instance, resources=resources)
    )
    assert [r.run_key for r in launched.run_requests] == [str(job["id"]) for job in jobs]


# --- incremental deliveries (PostgreSQL: the production database) ---------------------


def delivered_contacts(s3_client, engine, job_id) -> list[str]:
    with engine.connect() as conn:
        key = conn.execute(
            select(export_jobs.c.s3_key).where(export_jobs.c.id == job_id)
        ).scalar_one()
    body = s3_client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read().decode()
    return sorted(row["contact_id"] for row in csv.DictReader(io.StringIO(body, newline="")))


class Deliveries:
    """An incremental schedule whose due times are made and run one after another."""

    def __init__(self, instance, postgres_url, app_data, s3_client):
        self.instance, self.url, self.data, self.s3 = instance, postgres_url, app_data, s3_client
        self.engine = get_engine(postgres_url)
        self.manager, self.campaign = app_data.user(), app_data.campaign()
        self.schedule = app_data.schedule(
            self.campaign, self.manager, cron="* * * * *", incremental=True, created_at=LONG_AGO
        )
        self.minute = datetime(2026, 2, 1, 6, 0, 30, tzinfo=UTC)

    def due(self) -> uuid.UUID:
        self.minute += timedelta(minutes=1)
        assert len(record_due_deliveries(self.engine, "role", self.minute)) == 1
        return jobs_of(self.engine, self.schedule)[-1]["id"]

    def run(self, **options) -> tuple[dg.ExecuteInProcessResult, dict]:
        job_id = self.due()
        result = materialize_export(self.instance, self.url, self.campaign, job_id, **options)
        return result, self.data.job_row(job_id)

    def delivered(self, **options) -> tuple[list[str], dict]:
        result, job = self.run(**options)
        assert result.success and job["status"] == "completed"
        return delivered_contacts(self.s3, self.engine, job["id"]), job

    def touch(self, contact_id) -> None:
        """A re-call ends the contact: its row changes (updated_at = the writer's now())."""
        with self.engine.begin() as conn:
            conn.execute(
                update(contacts)
                .where(contacts.c.id == contact_id)
                .values(state="completed", updated_at=text("now()"))
            )


@pytest.fixture
def deliveries(instance, postgres_url, s3_client):
    return Deliveries(instance, postgres_url, AppData(get_engine(postgres_url)), s3_client)


def test_incremental_deliveries_hold_exactly_what_changed_since_the_last(deliveries):
    data, campaign = deliveries.data, deliveries.campaign
    ended = sorted(str(data.contact(campaign, state)) for state in ("completed", "refused"))
    recalled = data.contact(campaign, "not_reached")
    answered = data.contact(campaign, "completed")
    waiting = data.contact(campaign, "pending")

    first, first_job = deliveries.delivered()
    assert first == sorted([*ended, str(recalled), str(answered)])
    assert first_job["changed_since"] is None and first_job["snapshot_at"] is not None

    nothing, second_job = deliveries.delivered()
    assert nothing == []  # none repeated
    assert second_job["changed_since"] == first_job["snapshot_at"]

    deliveries.touch(recalled)  # not_reached -> completed
    deliveries.touch(waiting)  # pending -> completed
    with deliveries.engine.begin() as conn:  # a survey response arrives (completed_at: now)
        conn.execute(
            survey_responses.insert().values(
                id=uuid.uuid4(), contact_id=answered, campaign_id=campaign, q1_answer="yes"
            )
        )
    third, third_job = deliveries.delivered()
    assert third == sorted([str(recalled), str(waiting), str(answered)])
    assert third_job["changed_since"] == second_job["snapshot_at"]
    with deliveries.engine.connect() as conn:  # as the CLI, the HTTP API show the job
        shown = get_job(conn, third_job["id"]).to_json()
    assert shown["changed_since"] == iso_utc(second_job["snapshot_at"])
    assert shown["schedule_id"] == str(deliveries.schedule)


def test_a_change_committed_while_an_export_runs_is_in_the_next_delivery(deliveries):
    data, campaign = deliveries.data, deliveries.campaign
    before = data.contact(campaign, "completed")
    late = data.contact(campaign, "pending")
    # A writer's transaction is open while the first delivery extracts: its updated_at
    # (its now()) is earlier than the extraction, its commit later.
    with deliveries.engine.connect() as writer:
        writer.execute(
            update(contacts)
            .where(contacts.c.id == late)
            .values(state="completed", updated_at=text("now()"))
        )
        first, _ = deliveries.delivered()
        writer.commit()
    assert first == [str(before)]
    second, _ = deliveries.delivered()
    assert second == [str(late)]


def test_a_failed_delivery_does_not_move_the_window(deliveries, postgres_url):
    data, campaign = deliveries.data, deliveries.campaign
    data.contact(campaign, "completed")
    deliveries.delivered()
    changed = data.contact(campaign, "completed")
    result, job = deliveries.run(bucket="no-such-bucket")  # extracts, then cannot upload
    assert not result.success
    run_failure_sensor(deliveries.instance, result, postgres_url, bucket="no-such-bucket")
    failed = data.job_row(job["id"])
    assert failed["status"] == "failed" and failed["snapshot_at"] is not None
    again, _ = deliveries.delivered()
    assert again == [str(changed)]
