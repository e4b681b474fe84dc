"""The outbox of completion notifications (export_notifications).

Each export job that reaches completed, failed or cancelled gets one row per terminal
status, written by export_jobs in the transaction that ends the job, so that no end goes
unannounced and none is announced twice. The row holds the exact JSON body that is
signed and sent; the pipeline's webhook sensor delivers it. No download link and no
contact data ever go into a body.

Delivery state lives here too, so a restart of whatever sends loses nothing: ``due``
hands out what to send now, and ``mark_delivered``, ``schedule_retry`` and ``abandon``
are compare-and-sets that change only a row still undelivered and not abandoned, so a
late or repeated sender never revives or re-marks a finished row.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from .job_status import TERMINAL_JOB_STATUSES
from .schema import export_notifications
from .times import as_utc, iso_utc, utcnow

EVENTS = {status: f"export.{status}" for status in TERMINAL_JOB_STATUSES}


class EndedJob(Protocol):
    """What a notification tells of its job: export_jobs.ExportJob has it (a Protocol, so
    that this module, which export_jobs calls, need not import export_jobs)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def campaign_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def total_records(self) -> int | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def completed_at(self) -> datetime | None: ...


def body_of(job: EndedJob) -> str:
    """The notification's JSON body: the job's outcome, nothing a reader could download."""
    return json.dumps(
        {
            "event": EVENTS[job.status],
            "job_id": str(job.id),
            "campaign_id": str(job.campaign_id),
            "status": job.status,
            "total_records": job.total_records,
            "error_message": job.error_message,
            "occurred_at": iso_utc(job.completed_at) if job.completed_at else None,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def announce(conn: Connection, job: EndedJob) -> None:
    """Queue the notification of the job's terminal status (once per job and status)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    # Written here, to the microsecond (SQLite's now() has whole seconds): a job's events
    # are sent in this order.
    now = utcnow()
    conn.execute(
        dialect.insert(export_notifications)
        .values(
            id=uuid.uuid4(),
            export_job_id=job.id,
            event=EVENTS[job.status],
            body=body_of(job),
            created_at=now,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=["export_job_id", "event"])
    )


# last_error is for operators reading the table: one line, bounded.
MAX_ERROR_LENGTH = 500
# A URL's user info, query and fragment may carry a token: never stored.
_URL_USERINFO = re.compile(r"(?i)\b(https?://)[^/\s@]*@")
_URL_QUERY = re.compile(r"(?i)\b(https?://[^\s?#]*)[?#]\S*")


@dataclass(frozen=True)
class Notification:
    id: uuid.UUID
    export_job_id: uuid.UUID
    event: str
    body: str
    created_at: datetime
    next_attempt_at: datetime
    attempts: int
    delivered_at: datetime | None
    abandoned_at: datetime | None
    last_error: str | None

    @classmethod
    def from_row(cls, row) -> Notification:
        values = dict(row._mapping)
        for name in ("created_at", "next_attempt_at", "delivered_at", "abandoned_at"):
            values[name] = as_utc(values[name])
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})


def _open():
    return [
        export_notifications.c.delivered_at.is_(None),
        export_notifications.c.abandoned_at.is_(None),
    ]


def due(conn: Connection, now: datetime, limit: int, *, lock: bool = False) -> list[Notification]:
    """Notifications to send now: undelivered, not abandoned, next attempt due, oldest first.

    With ``lock`` (PostgreSQL; SQLite has no row locks and ignores it) the rows stay locked
    until the transaction ends and rows another sender holds are skipped, so two senders
    never send the same notification at once.
    """
    older = export_notifications.alias("older")
    query = (
        select(export_notifications)
        .where(
            *_open(),
            export_notifications.c.next_attempt_at <= now,
            # A job's events go out in order: its completion (after a re-execution) waits
            # while its earlier failure is still being retried.
            ~select(older.c.id)
            .where(
                older.c.export_job_id == export_notifications.c.export_job_id,
                older.c.created_at < export_notifications.c.created_at,
                older.c.delivered_at.is_(None),
                older.c.abandoned_at.is_(None),
            )
            .exists(),
        )
        .order_by(export_notifications.c.created_at, export_notifications.c.id)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return [Notification.from_row(row) for row in conn.execute(query)]


def get(conn: Connection, notification_id: uuid.UUID) -> Notification | None:
    row = conn.execute(
        select(export_notifications).where(export_notifications.c.id == notification_id)
    ).one_or_none()
    return None if row is None else Notification.from_row(row)


def of_job(conn: Connection, export_job_id: uuid.UUID) -> list[Notification]:
    """A job's notifications, oldest first."""
    rows = conn.execute(
        select(export_notifications)
        .where(export_notifications.c.export_job_id == export_job_id)
        .order_by(export_notifications.c.created_at, export_notifications.c.id)
    )
    return [Notification.from_row(row) for row in rows]


def lease(conn: Connection, notification: Notification, until: datetime) -> bool:
    """Take the notification for one attempt: not due to anyone else until ``until``, so
    that it is sent without a transaction held open; a sender that dies mid-attempt leaves
    it due again then. False if another sender took or finished it first (compare-and-set
    on the attempt and the due time it was read with)."""
    result = conn.execute(
        export_notifications.update()
        .where(
            export_notifications.c.id == notification.id,
            *_open(),
            export_notifications.c.attempts == notification.attempts,
            export_notifications.c.next_attempt_at == notification.next_attempt_at,
        )
        .values(next_attempt_at=until)
    )
    return result.rowcount == 1


def _update_open(
    conn: Connection, notification_id: uuid.UUID, attempts_before: int | None = None, **values
) -> bool:
    conditions = [export_notifications.c.id == notification_id, *_open()]
    if attempts_before is not None:  # still the attempt this sender leased
        conditions.append(export_notifications.c.attempts == attempts_before)
    result = conn.execute(export_notifications.update().where(*conditions).values(**values))
    return result.rowcount == 1


def mark_delivered(
    conn: Connection, notification_id: uuid.UUID, *, attempts: int, delivered_at: datetime
) -> bool:
    """Record the receiver's 2xx; False if the row was already delivered or abandoned."""
    return _update_open(
        conn, notification_id, attempts - 1, attempts=attempts, delivered_at=delivered_at
    )


def schedule_retry(
    conn: Connection,
    notification_id: uuid.UUID,
    *,
    attempts: int,
    next_attempt_at: datetime,
    last_error: str,
) -> bool:
    """Record a failed attempt and when to try again; False if the row is no longer open."""
    return _update_open(
        conn,
        notification_id,
        attempts - 1,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        last_error=_one_line(last_error),
    )


def abandon(
    conn: Connection,
    notification_id: uuid.UUID,
    *,
    attempts: int,
    abandoned_at: datetime,
    last_error: str,
) -> bool:
    """Give up on the notification (refused, or too late); False if it is no longer open."""
    return _update_open(
        conn,
        notification_id,
        attempts=attempts,
        abandoned_at=abandoned_at,
        last_error=_one_line(last_error),
    )


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    line = _URL_QUERY.sub(r"\1", _URL_USERINFO.sub(r"\1", line))
    return line if len(line) <= MAX_ERROR_LENGTH else line[: MAX_ERROR_LENGTH - 3] + "..."
