"""Recurring exports: each due time of an enabled schedule becomes one pending export job.

A sensor rather than Dagster schedules: a Dagster schedule is a definition, fixed when the
code location loads, while export schedules are rows users add and delete at any time.
The sensor reads them on every tick, and its ticks (with what each made) show in the UI.
The job it records then runs as any request: the request sensor launches its run.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
from sqlalchemy import Engine

from ..app_db import export_schedules
from ..service.requests import ExportRequests, InvalidRequest
from ..service.schedules import (
    ExportSchedules,
    check_cron,
    check_time_zone,
    latest_due_time,
)
from ..settings import Settings
from .resources import AppDatabase

SCHEDULES_SENSOR = "export_schedules_sensor"
# Due times are minutes: a tick every 15 s makes a delivery's job within 15 s of it.
SCHEDULES_SENSOR_INTERVAL_SECONDS = 15


def record_due_deliveries(engine: Engine, access_policy: str, now: datetime) -> list[str]:
    """Make the job of each enabled schedule's latest due time at or before ``now`` that has
    none yet; a schedule whose creator may no longer export its campaign gets a failed job
    saying why and is disabled. Only the latest due time counts: after downtime, or while
    the schedule's previous delivery is still open, the missed ones before it are not
    delivered. Returns one line per job made."""
    access = ExportSchedules(ExportRequests(engine, objects=None, access_policy=access_policy))
    made = []
    with engine.connect() as conn:
        schedules = export_schedules.enabled_schedules(conn)
    for schedule in schedules:
        unusable = None
        try:
            # (Rows written by SQL skip the API's checks: check again, per schedule.)
            due_at = latest_due_time(
                check_cron(schedule.cron), check_time_zone(schedule.time_zone), now
            )
        except InvalidRequest as error:
            unusable = f"export schedule {schedule.id} can no longer run: {error}"
            due_at = now.replace(second=0, microsecond=0)
        # A due time before the schedule existed, or that made its job already, is not due.
        if due_at <= (schedule.last_due_at or schedule.created_at):
            continue
        with engine.begin() as conn:
            current = export_schedules.get_schedule(conn, schedule.id)
            if current is None or not current.enabled:  # deleted or disabled meanwhile
                continue
            if export_schedules.has_open_delivery(conn, schedule.id):
                # Deliveries of a schedule never overlap (two would start from the same
                # window and repeat each other's rows): the due time waits for the open
                # one to end, and then the latest due time is delivered.
                continue
            job = export_schedules.record_due_time(
                conn, current, due_at, refusal=unusable or access.refusal(conn, current)
            )
        if job is not None:
            made.append(
                f"schedule {schedule.id} due {due_at.isoformat()}: export job {job.id} "
                f"{job.status}" + (f" ({job.error_message})" if job.error_message else "")
            )
    return made


def build_export_schedules_sensor(settings: Settings) -> dg.SensorDefinition:
    access_policy = settings.export_access_policy

    @dg.sensor(
        name=SCHEDULES_SENSOR,
        minimum_interval_seconds=SCHEDULES_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Recurring exports (export_schedules): records one pending export job "
        "per due time of each enabled schedule, requested by its creator (the request "
        "sensor runs it); after downtime only the latest missed due time. A schedule whose "
        "creator may no longer export the campaign gets a failed job and is disabled.",
    )
    def export_schedules_sensor(
        context: dg.SensorEvaluationContext, app_db: AppDatabase
    ) -> dg.SkipReason:
        made = record_due_deliveries(app_db.engine, access_policy, datetime.now(UTC))
        for line in made:
            context.log.info(line)
        if not made:
            return dg.SkipReason("no export schedule is due")
        return dg.SkipReason(f"{len(made)} deliveries recorded: " + "; ".join(made))

    return export_schedules_sensor
