"""Queries on export_schedules, and on the export_jobs rows that are their deliveries.

A schedule's due time becomes one export_jobs row (INSERT ... ON CONFLICT DO NOTHING on
the unique (schedule_id, due_at)), so evaluating the same due time twice, from a repeated
tick or after a restart, makes no second job. An incremental delivery's window starts at
the snapshot time of the schedule's latest completed delivery: a failed or cancelled one
never moves it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from . import export_jobs as jobs
from .job_status import OPEN_JOB_STATUSES, JobStatus
from .schema import TERMINAL_CONTACT_STATES, export_jobs, export_schedules
from .times import as_utc, iso_utc, utcnow


@dataclass(frozen=True)
class ExportSchedule:
    id: uuid.UUID
    campaign_id: uuid.UUID
    created_by_user_id: uuid.UUID
    cron: str
    time_zone: str
    options: dict
    incremental: bool
    enabled: bool
    disabled_reason: str | None
    last_due_at: datetime | None
    created_at: datetime
    deleted_at: datetime | None = None

    @classmethod
    def from_row(cls, row) -> ExportSchedule:
        values = dict(row._mapping)
        for name in ("last_due_at", "created_at", "deleted_at"):
            values[name] = as_utc(values[name])
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    @property
    def shown_options(self) -> dict:
        """The options as a job's JSON shows them: every default, the outcomes listed (a
        schedule made before an option existed has its default)."""
        values = job_values(self.options)
        return {
            "bom": values["bom"],
            "compression": values["compression"],
            "format": values["format"],
            "outcomes": list(self.options.get("outcomes") or TERMINAL_CONTACT_STATES),
            "attempted_from": self.options.get("attempted_from"),
            "attempted_to": self.options.get("attempted_to"),
            "time_zone": values["time_zone"],
        }

    def to_json(self) -> dict:
        """The schedule as the CLI and the app show it: ids as strings, ISO 8601 UTC times."""
        return {
            "schedule_id": str(self.id),
            "campaign_id": str(self.campaign_id),
            "created_by_user_id": str(self.created_by_user_id),
            "cron": self.cron,
            "time_zone": self.time_zone,
            "options": self.shown_options,
            "incremental": self.incremental,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "last_due_at": iso_utc(self.last_due_at) if self.last_due_at else None,
            "created_at": iso_utc(self.created_at),
        }


_LIVE = export_schedules.c.deleted_at.is_(None)


def job_values(options: dict) -> dict:
    """A schedule's stored options as export_jobs columns (a schedule made before an
    option existed has its default)."""
    values = {
        "bom": options.get("bom", False),
        "compression": options.get("compression", "none"),
        "format": options.get("format", "csv"),
        "outcomes": jobs.outcomes_column(options.get("outcomes")),
        "time_zone": options.get("time_zone", "UTC"),
    }
    for bound in ("attempted_from", "attempted_to"):
        stored = options.get(bound)
        values[bound] = None if stored is None else datetime.fromisoformat(stored)
    return values


def insert_schedule(
    conn: Connection,
    campaign_id: uuid.UUID,
    created_by_user_id: uuid.UUID,
    *,
    cron: str,
    time_zone: str,
    options: dict,
    incremental: bool,
) -> ExportSchedule:
    row = conn.execute(
        export_schedules.insert()
        .values(
            id=uuid.uuid4(),
            campaign_id=campaign_id,
            created_by_user_id=created_by_user_id,
            cron=cron,
            time_zone=time_zone,
            options=options,
            incremental=incremental,
            enabled=True,
            # Set here, not by the server: due times are compared with it, and SQLite's
            # now() has whole seconds only.
            created_at=utcnow(),
        )
        .returning(*export_schedules.c)
    ).one()
    return ExportSchedule.from_row(row)


def get_schedule(conn: Connection, schedule_id: uuid.UUID) -> ExportSchedule | None:
    """The schedule, unless it does not exist or was deleted."""
    row = conn.execute(
        select(export_schedules).where(export_schedules.c.id == schedule_id, _LIVE)
    ).one_or_none()
    return None if row is None else ExportSchedule.from_row(row)


def list_schedules(conn: Connection, campaign_id: uuid.UUID) -> list[ExportSchedule]:
    """The campaign's schedules (not the deleted ones), oldest first."""
    rows = conn.execute(
        select(export_schedules)
        .where(export_schedules.c.campaign_id == campaign_id, _LIVE)
        .order_by(export_schedules.c.created_at, export_schedules.c.id)
    )
    return [ExportSchedule.from_row(row) for row in rows]


def delete_schedule(conn: Connection, schedule_id: uuid.UUID) -> bool:
    """Delete the schedule: no due time of it makes a job from now on. The row stays (marked
    deleted) for the jobs that name it; a delivery already made runs as any request."""
    result = conn.execute(
        export_schedules.update()
        .where(export_schedules.c.id == schedule_id, _LIVE)
        .values(deleted_at=utcnow(), enabled=False)
    )
    return result.rowcount == 1


def enabled_schedules(conn: Connection) -> list[ExportSchedule]:
    rows = conn.execute(
        select(export_schedules)
        .where(export_schedules.c.enabled.is_(True), _LIVE)
        .order_by(export_schedules.c.created_at, export_schedules.c.id)
    )
    return [ExportSchedule.from_row(row) for row in rows]


def record_due_time(
    conn: Connection, schedule: ExportSchedule, due_at: datetime, refusal: str | None = None
) -> jobs.ExportJob | None:
    """Make the schedule's job for this due time, pending (or failed with ``refusal``,
    which also disables the schedule, saying why); None when the due time has its job
    already. Moves the schedule's last_due_at forward, never back."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
        export_jobs
    )
    row = conn.execute(
        insert.values(
            id=uuid.uuid4(),
            campaign_id=schedule.campaign_id,
            requested_by_user_id=schedule.created_by_user_id,
            status=JobStatus.PENDING,
            schedule_id=schedule.id,
            due_at=due_at,
            # Where the window starts now; the run reads it again when it extracts.
            changed_since=delivered_through(conn, schedule.id) if schedule.incremental else None,
            # The options as the request path checked them, in the columns' form.
            **job_values(schedule.options),
        )
        .on_conflict_do_nothing(index_elements=["schedule_id", "due_at"])
        .returning(export_jobs.c.id)
    ).one_or_none()
    conn.execute(
        export_schedules.update()
        .where(
            export_schedules.c.id == schedule.id,
            or_(export_schedules.c.last_due_at.is_(None), export_schedules.c.last_due_at < due_at),
        )
        .values(last_due_at=due_at)
    )
    if row is None:
        return None
    if refusal is not None:
        jobs.mark_failed(conn, row.id, refusal)  # its webhook says so too
        disable_schedule(conn, schedule.id, refusal)
    return jobs.get_job(conn, row.id)


def has_open_delivery(conn: Connection, schedule_id: uuid.UUID) -> bool:
    """Whether a delivery of the schedule is still pending or running."""
    query = select(export_jobs.c.id).where(
        export_jobs.c.schedule_id == schedule_id, export_jobs.c.status.in_(OPEN_JOB_STATUSES)
    )
    return conn.execute(query.limit(1)).first() is not None


def disable_schedule(conn: Connection, schedule_id: uuid.UUID, reason: str) -> bool:
    result = conn.execute(
        export_schedules.update()
        .where(export_schedules.c.id == schedule_id, export_schedules.c.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason)
    )
    return result.rowcount == 1


def schedule_of_job(conn: Connection, job: jobs.ExportJob) -> ExportSchedule | None:
    """The schedule a job is a delivery of, deleted or not; None for a one-off request."""
    if job.schedule_id is None:
        return None
    row = conn.execute(
        select(export_schedules).where(export_schedules.c.id == job.schedule_id)
    ).one_or_none()
    return None if row is None else ExportSchedule.from_row(row)


def delivered_through(conn: Connection, schedule_id: uuid.UUID) -> datetime | None:
    """Where the schedule's next incremental delivery starts: the snapshot time of its
    latest completed delivery; None before the first one completes (every contact)."""
    value = conn.execute(
        select(export_jobs.c.snapshot_at)
        .where(
            export_jobs.c.schedule_id == schedule_id,
            export_jobs.c.status == JobStatus.COMPLETED,
            export_jobs.c.snapshot_at.is_not(None),
        )
        .order_by(export_jobs.c.snapshot_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return as_utc(value)


def record_window(
    conn: Connection,
    job_id: uuid.UUID,
    run_id: str,
    *,
    changed_since: datetime | None,
    snapshot_at: datetime,
) -> bool:
    """Record an incremental delivery's window on its job while ``run_id`` owns it."""
    result = conn.execute(
        export_jobs.update()
        .where(
            export_jobs.c.id == job_id,
            export_jobs.c.status == JobStatus.RUNNING,
            export_jobs.c.dagster_run_id == run_id,
        )
        .values(changed_since=changed_since, snapshot_at=snapshot_at)
    )
    return result.rowcount == 1
