"""Queries on export_jobs: the request row's whole lifecycle.

pending -> running (a run claims it) -> completed | failed | cancelled (a pending job may
also be cancelled or failed at once). Every status change is a
compare-and-set on the state it expects (status, owning run, object key), so a late,
repeated or foreign event never moves a job backwards or writes over another run's
result. Writes that carry a signed link raise errors without their parameters.
A change to a terminal status also writes the job's notification (notifications.py) in
the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, case, cast, func, or_, select, tuple_

from . import notifications
from .errors import safe_database_errors
from .job_status import OPEN_JOB_STATUSES, TERMINAL_JOB_STATUSES, JobStatus
from .schema import (
    COMPRESSIONS,
    FORMATS,
    FORMATS_WITH_ENVELOPE,
    TERMINAL_CONTACT_STATES,
    campaigns,
    export_jobs,
)
from .times import as_utc, is_known_time_zone, iso_utc, utcnow

# export_jobs.outcomes holds the states comma-separated.
OUTCOME_SEPARATOR = ","


def outcomes_column(outcomes: Collection[str] | None) -> str | None:
    """The stored form of a request's outcomes (None: every terminal state)."""
    return None if outcomes is None else OUTCOME_SEPARATOR.join(outcomes)


_TIMES = (
    "url_expires_at",
    "created_at",
    "completed_at",
    "cancel_requested_at",
    "attempted_from",
    "attempted_to",
    "due_at",
    "changed_since",
    "snapshot_at",
)


@dataclass(frozen=True)
class ExportJob:
    id: uuid.UUID
    campaign_id: uuid.UUID
    requested_by_user_id: uuid.UUID | None
    status: str
    s3_key: str | None
    download_url: str | None
    url_expires_at: datetime | None
    error_message: str | None
    total_records: int | None
    created_at: datetime
    completed_at: datetime | None
    dagster_run_id: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    bom: bool = False
    compression: str = "none"
    progress_percent: int | None = None
    cancel_requested_at: datetime | None = None
    # The bucket of s3_key (revision V0006); None on rows recorded before: the configured one.
    s3_bucket: str | None = None
    # The format, filters and time zone (revision V0008); outcomes as stored (NULL: all).
    format: str = "csv"
    outcomes: str | None = None
    attempted_from: datetime | None = None
    attempted_to: datetime | None = None
    time_zone: str = "UTC"
    # A recurring export's delivery (revision V0009): its schedule and due time; for an
    # incremental one the window's start (None: every terminal contact) and, once
    # extracted, the database snapshot's time its rows reach (the next window's start).
    schedule_id: uuid.UUID | None = None
    due_at: datetime | None = None
    changed_since: datetime | None = None
    snapshot_at: datetime | None = None

    @property
    def outcome_states(self) -> tuple[str, ...]:
        """The terminal states the file keeps."""
        if self.outcomes is None:
            return TERMINAL_CONTACT_STATES
        return tuple(self.outcomes.split(OUTCOME_SEPARATOR))

    @property
    def options(self) -> dict:
        """The request's file options, as every job JSON shows them (defaults included)."""
        return {
            "bom": self.bom,
            "compression": self.compression,
            "format": self.format,
            "outcomes": list(self.outcome_states),
            "attempted_from": None if self.attempted_from is None else iso_utc(self.attempted_from),
            "attempted_to": None if self.attempted_to is None else iso_utc(self.attempted_to),
            "time_zone": self.time_zone,
        }

    @classmethod
    def from_row(cls, row) -> ExportJob:
        values = dict(row._mapping)
        for name in _TIMES:
            values[name] = as_utc(values[name])
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        """The job as the CLI and the app show it: ids as strings, ISO 8601 UTC times."""
        out = {"job_id": str(self.id)}
        for name, value in asdict(self).items():
            if name in ("id", "dagster_run_id"):  # the run id is Dagster's, not the app's
                continue
            if name in _OPTION_FIELDS:
                out.setdefault("options", self.options)
                continue
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = iso_utc(value)
            out[name] = value
        return out


_OPTION_FIELDS = (
    "bom",
    "compression",
    "format",
    "outcomes",
    "attempted_from",
    "attempted_to",
    "time_zone",
)


@dataclass(frozen=True)
class PendingJob:
    id: uuid.UUID
    campaign_id: uuid.UUID
    campaign_exists: bool
    compression: str = "none"
    bom: bool = False
    format: str = "csv"
    outcomes: str | None = None
    time_zone: str = "UTC"


def unknown_option(job: ExportJob | PendingJob) -> str | None:
    """Why the pipeline cannot make a job's file, in one line, when its row holds an option
    value this release does not know (written by SQL where the schema's rules are missing);
    None when it can."""
    if job.compression not in COMPRESSIONS:
        return (
            f"export_jobs.compression is {job.compression!r}, not one of: {', '.join(COMPRESSIONS)}"
        )
    if job.format not in FORMATS:
        return f"export_jobs.format is {job.format!r}, not one of: {', '.join(FORMATS)}"
    if job.format not in FORMATS_WITH_ENVELOPE and (job.bom or job.compression != "none"):
        return (
            f"export_jobs.format is {job.format!r}, which takes neither a BOM nor gzip "
            f"(bom {job.bom!r}, compression {job.compression!r})"
        )
    if job.outcomes is not None:
        states = job.outcomes.split(OUTCOME_SEPARATOR)
        unknown = [state for state in states if state not in TERMINAL_CONTACT_STATES]
        if unknown:
            return (
                f"export_jobs.outcomes is {job.outcomes!r}: {unknown[0]!r} is not one of the "
                f"terminal states {', '.join(TERMINAL_CONTACT_STATES)}"
            )
    if not is_known_time_zone(job.time_zone):
        return f"export_jobs.time_zone is {job.time_zone!r}, not an IANA time zone name"
    return None


def insert_job(
    conn: Connection,
    campaign_id: uuid.UUID,
    requested_by_user_id: uuid.UUID | None,
    status: JobStatus = JobStatus.PENDING,
    job_id: uuid.UUID | None = None,
    dagster_run_id: str | None = None,
    *,
    bom: bool = False,
    compression: str = "none",
    idempotency_key: str | None = None,
    format: str = "csv",
    outcomes: Collection[str] | None = None,
    attempted_from: datetime | None = None,
    attempted_to: datetime | None = None,
    time_zone: str = "UTC",
) -> ExportJob:
    row = conn.execute(
        export_jobs.insert()
        .values(
            id=job_id or uuid.uuid4(),
            idempotency_key=idempotency_key,
            campaign_id=campaign_id,
            requested_by_user_id=requested_by_user_id,
            status=status,
            dagster_run_id=dagster_run_id,
            bom=bom,
            compression=compression,
            format=format,
            outcomes=outcomes_column(outcomes),
            attempted_from=attempted_from,
            attempted_to=attempted_to,
            time_zone=time_zone,
            progress_percent=0 if status == JobStatus.RUNNING else None,
        )
        .returning(*export_jobs.c)
    ).one()
    return ExportJob.from_row(row)


def job_of_idempotency_key(
    conn: Connection, user_id: uuid.UUID, idempotency_key: str
) -> ExportJob | None:
    row = conn.execute(
        select(export_jobs).where(
            export_jobs.c.requested_by_user_id == user_id,
            export_jobs.c.idempotency_key == idempotency_key,
        )
    ).one_or_none()
    return None if row is None else ExportJob.from_row(row)


def forget_idempotency_key(conn: Connection, job_id: uuid.UUID) -> None:
    """The key is free again (its 24 hours are over); the job stays as it is."""
    conn.execute(
        export_jobs.update().where(export_jobs.c.id == job_id).values(idempotency_key=None)
    )


def get_job(conn: Connection, job_id: uuid.UUID) -> ExportJob | None:
    row = conn.execute(select(export_jobs).where(export_jobs.c.id == job_id)).one_or_none()
    return None if row is None else ExportJob.from_row(row)


def list_jobs(
    conn: Connection,
    campaign_id: uuid.UUID,
    limit: int | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[ExportJob]:
    """The campaign's jobs newest first; a page of at most `limit` of them, those
    after (older than) the keyset `before` = (created_at, id) of the previous page's last."""
    query = (
        select(export_jobs)
        .where(export_jobs.c.campaign_id == campaign_id)
        .order_by(export_jobs.c.created_at.desc(), export_jobs.c.id.desc())
    )
    if before is not None:
        query = query.where(tuple_(export_jobs.c.created_at, export_jobs.c.id) < tuple_(*before))
    if limit is not None:
        query = query.limit(limit)
    return [ExportJob.from_row(row) for row in conn.execute(query)]


def waiting_ahead(conn: Connection, job: ExportJob) -> int:
    """How many pending or running jobs were requested before this one."""
    return conn.execute(
        select(func.count())
        .select_from(export_jobs)
        .where(
            export_jobs.c.status.in_(OPEN_JOB_STATUSES),
            tuple_(export_jobs.c.created_at, export_jobs.c.id) < tuple_(job.created_at, job.id),
        )
    ).scalar_one()


def still_pending(conn: Connection, job_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    if not job_ids:
        return set()
    rows = conn.execute(
        select(export_jobs.c.id).where(
            export_jobs.c.id.in_(list(job_ids)), export_jobs.c.status == JobStatus.PENDING
        )
    )
    return set(rows.scalars())


def next_pending_jobs(
    conn: Connection, exclude_ids: Collection[uuid.UUID], limit: int
) -> list[PendingJob]:
    """Pending jobs oldest first, skipping those already handed to Dagster."""
    query = (
        select(
            export_jobs.c.id,
            export_jobs.c.campaign_id,
            (campaigns.c.id.is_not(None)).label("campaign_exists"),
            export_jobs.c.compression,
            export_jobs.c.bom,
            export_jobs.c.format,
            export_jobs.c.outcomes,
            export_jobs.c.time_zone,
        )
        .select_from(export_jobs.outerjoin(campaigns, campaigns.c.id == export_jobs.c.campaign_id))
        .where(export_jobs.c.status == JobStatus.PENDING)
        .order_by(export_jobs.c.created_at, export_jobs.c.id)
        .limit(limit)
    )
    if exclude_ids:
        query = query.where(export_jobs.c.id.not_in(list(exclude_ids)))
    return [
        PendingJob(
            row.id,
            row.campaign_id,
            bool(row.campaign_exists),
            row.compression,
            row.bom,
            row.format,
            row.outcomes,
            row.time_zone,
        )
        for row in conn.execute(query)
    ]


def _compare_and_set(conn: Connection, job_id: uuid.UUID, conditions, **values) -> bool:
    """Update the job's row only while every condition still holds; return whether it did.

    Every transition is one such UPDATE, so two writers can never both win.
    """
    result = conn.execute(
        export_jobs.update().where(export_jobs.c.id == job_id, *conditions).values(**values)
    )
    return result.rowcount == 1


def _transition(conn: Connection, job_id: uuid.UUID, conditions, **values) -> ExportJob | None:
    """A compare-and-set that returns the updated job; a change to a terminal status
    writes the job's notification in the same transaction."""
    row = conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job_id, *conditions)
        .values(**values)
        .returning(*export_jobs.c)
    ).one_or_none()
    if row is None:
        return None
    job = ExportJob.from_row(row)
    if job.status in TERMINAL_JOB_STATUSES:
        notifications.announce(conn, job)
    return job


def _owned_by(run_id: str) -> list:
    return [export_jobs.c.status == JobStatus.RUNNING, export_jobs.c.dagster_run_id == run_id]


# Columns cleared when a run (re)claims a job: it starts afresh.
_RESULT_CLEARED = {
    "error_message": None,
    "download_url": None,
    "url_expires_at": None,
    "total_records": None,
    "completed_at": None,
    "size_bytes": None,
    "sha256": None,
    # 0 for a new job; a retry or re-execution keeps what its parent reached (progress
    # never goes back) and reports again once it gets further.
    "progress_percent": func.coalesce(export_jobs.c.progress_percent, 0),
}


def claim_job(
    conn: Connection, job_id: uuid.UUID, run_id: str, from_statuses: Collection[str]
) -> ExportJob | None:
    """Atomically make ``run_id`` the job's owner and mark it running, if its status is one
    of ``from_statuses``; return the claimed job, or None when the job was not claimable.

    The key of an object an earlier run wrote is kept, so that it can still be found.
    """
    row = conn.execute(
        export_jobs.update()
        .where(
            export_jobs.c.id == job_id,
            export_jobs.c.status.in_(list(from_statuses)),
            # A job its user asked to cancel is not taken up again (the cancel sensor ends it).
            export_jobs.c.cancel_requested_at.is_(None),
        )
        .values(status=JobStatus.RUNNING, dagster_run_id=run_id, **_RESULT_CLEARED)
        .returning(*export_jobs.c)
    ).one_or_none()
    return None if row is None else ExportJob.from_row(row)


def running_jobs_of_runs(conn: Connection, run_ids: Collection[str]) -> list[ExportJob]:
    """Jobs still running under any of these runs (a backfill run's campaigns)."""
    rows = conn.execute(
        select(export_jobs).where(
            export_jobs.c.status == JobStatus.RUNNING,
            export_jobs.c.dagster_run_id.in_(list(run_ids)),
        )
    )
    return [ExportJob.from_row(row) for row in rows]


def waiting_jobs(conn: Connection, status: str, requested_before: datetime) -> list[ExportJob]:
    """Jobs still in `status` that were requested before the given time, oldest first."""
    rows = conn.execute(
        select(export_jobs)
        .where(export_jobs.c.status == status, export_jobs.c.created_at < requested_before)
        .order_by(export_jobs.c.created_at)
    )
    return [ExportJob.from_row(row) for row in rows]


def has_live_file(conn: Connection, campaign_id: uuid.UUID, completed_after: datetime) -> bool:
    """Whether an export of the campaign completed after the given time still has its
    file (older ones are the retention run's to delete)."""
    query = select(export_jobs.c.id).where(
        export_jobs.c.campaign_id == campaign_id,
        export_jobs.c.status == JobStatus.COMPLETED,
        export_jobs.c.s3_key.is_not(None),
        export_jobs.c.completed_at >= completed_after,
    )
    return conn.execute(query.limit(1)).first() is not None


def record_object_key(
    conn: Connection, job_id: uuid.UUID, run_id: str, s3_key: str, s3_bucket: str | None = None
) -> bool:
    """Record the key and its bucket before the object is written, so every object is
    findable from its job whatever S3_BUCKET_NAME says later (None: the configured one)."""
    return _compare_and_set(conn, job_id, _owned_by(run_id), s3_key=s3_key, s3_bucket=s3_bucket)


def mark_completed(
    conn: Connection,
    job_id: uuid.UUID,
    *,
    run_id: str,
    s3_key: str,
    download_url: str,
    url_expires_at: datetime,
    total_records: int,
    size_bytes: int | None = None,
    sha256: str | None = None,
    s3_bucket: str | None = None,
) -> bool:
    """Complete the job if ``run_id`` still owns it with this key and nobody asked to cancel
    it; return whether it did. ``s3_bucket``, when given, is where the object lies (the link
    is signed there); ``size_bytes`` and ``sha256`` describe it."""
    where = {} if s3_bucket is None else {"s3_bucket": s3_bucket}
    with safe_database_errors(f"recording export job {job_id} as completed"):
        return (
            _transition(
                conn,
                job_id,
                [
                    *_owned_by(run_id),
                    export_jobs.c.s3_key == s3_key,
                    export_jobs.c.cancel_requested_at.is_(None),
                ],
                status=JobStatus.COMPLETED,
                progress_percent=100,
                **where,
                download_url=download_url,
                url_expires_at=url_expires_at,
                total_records=total_records,
                size_bytes=size_bytes,
                sha256=sha256,
                error_message=None,
                completed_at=utcnow(),
            )
            is not None
        )


def mark_failed(
    conn: Connection, job_id: uuid.UUID, error_message: str, run_id: str | None = None
) -> bool:
    """Fail a job that is not finished yet; return whether this call failed it.

    With ``run_id``, only while that run owns the job (or no run has claimed it yet):
    a run launched with another job's tag, or a stale one, cannot fail it.
    """
    return _end(conn, job_id, JobStatus.FAILED, error_message, run_id)


def mark_cancelled(
    conn: Connection, job_id: uuid.UUID, message: str, run_id: str | None = None
) -> bool:
    """Cancel a job that is not finished yet, as mark_failed fails it (same owner rule)."""
    return _end(conn, job_id, JobStatus.CANCELLED, message, run_id)


# What a job its user asked to cancel says when it ends (whatever stopped its run).
CANCELLED_BY_USER = "cancelled at the user's request"


def _end(
    conn: Connection, job_id: uuid.UUID, status: JobStatus, message: str, run_id: str | None
) -> bool:
    conditions = [export_jobs.c.status.in_(OPEN_JOB_STATUSES)]
    if run_id is not None:
        conditions.append(
            or_(export_jobs.c.dagster_run_id.is_(None), export_jobs.c.dagster_run_id == run_id)
        )
    # A job whose user asked to cancel it ends cancelled, whatever stopped its run: decided
    # in the UPDATE itself, so a cancel asked for a moment before cannot be lost.
    asked_to_cancel = export_jobs.c.cancel_requested_at.is_not(None)
    return (
        _transition(
            conn,
            job_id,
            conditions,
            status=cast(
                case((asked_to_cancel, JobStatus.CANCELLED), else_=status),
                export_jobs.c.status.type,
            ),
            error_message=case((asked_to_cancel, CANCELLED_BY_USER), else_=message),
            download_url=None,
            url_expires_at=None,
            completed_at=utcnow(),
        )
        is not None
    )


def cancel_pending(conn: Connection, job_id: uuid.UUID, message: str) -> ExportJob | None:
    """Cancel a job no run has claimed yet, at once; None when it is no longer pending."""
    return _transition(
        conn,
        job_id,
        [export_jobs.c.status == JobStatus.PENDING],
        status=JobStatus.CANCELLED,
        error_message=message,
        completed_at=utcnow(),
    )


def request_cancel(conn: Connection, job_id: uuid.UUID) -> ExportJob | None:
    """Ask the pipeline to cancel a running job (it terminates the run, or the run's next
    progress report stops it); None when the job is not running. Asking twice keeps the
    first time."""
    return _transition(
        conn,
        job_id,
        [export_jobs.c.status == JobStatus.RUNNING],
        cancel_requested_at=func.coalesce(export_jobs.c.cancel_requested_at, utcnow()),
    )


def cancel_requested(conn: Connection, limit: int = 100) -> list[ExportJob]:
    """Running jobs whose user asked to cancel them, oldest request first."""
    rows = conn.execute(
        select(export_jobs)
        .where(
            export_jobs.c.status == JobStatus.RUNNING,
            export_jobs.c.cancel_requested_at.is_not(None),
        )
        .order_by(export_jobs.c.cancel_requested_at)
        .limit(limit)
    )
    return [ExportJob.from_row(row) for row in rows]


def cancelled_before_claim(conn: Connection, since: datetime) -> list[ExportJob]:
    """Jobs cancelled while pending (no run ever claimed them) since the given time: a run
    the request sensor launched for one may still wait in Dagster's queue."""
    rows = conn.execute(
        select(export_jobs).where(
            export_jobs.c.status == JobStatus.CANCELLED,
            export_jobs.c.dagster_run_id.is_(None),
            export_jobs.c.completed_at >= since,
        )
    )
    return [ExportJob.from_row(row) for row in rows]


def report_progress(conn: Connection, job_id: uuid.UUID, run_id: str, percent: int) -> bool:
    """Raise the job's progress to ``percent`` (never lower it) while ``run_id`` owns it;
    return whether the run should go on: False once the job was asked to cancel, or is no
    longer this run's."""
    percent = max(0, min(int(percent), 99))  # 100 is for a completed job only
    current = func.coalesce(export_jobs.c.progress_percent, 0)
    row = conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job_id, *_owned_by(run_id))
        .values(progress_percent=case((current < percent, percent), else_=current))
        .returning(export_jobs.c.cancel_requested_at)
    ).one_or_none()
    return row is not None and row.cancel_requested_at is None


def update_download_url(
    conn: Connection,
    job_id: uuid.UUID,
    *,
    s3_key: str,
    download_url: str,
    url_expires_at: datetime,
) -> bool:
    """Store a re-signed link if the job is still completed with this file; else False
    (retention deleted the file, or a re-run replaced it, since the caller read the row)."""
    with safe_database_errors(f"storing the new link of export job {job_id}"):
        return _compare_and_set(
            conn,
            job_id,
            [export_jobs.c.status == JobStatus.COMPLETED, export_jobs.c.s3_key == s3_key],
            download_url=download_url,
            url_expires_at=url_expires_at,
        )


def completed_before(
    conn: Connection,
    cutoff: datetime,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[ExportJob]:
    """Completed jobs older than the cutoff whose file has not been deleted yet, oldest
    first; with ``after`` (a previous page's last (completed_at, id)), those past it, so a
    caller moves on past files it could not delete."""
    query = select(export_jobs).where(
        export_jobs.c.status == JobStatus.COMPLETED,
        export_jobs.c.s3_key.is_not(None),
        export_jobs.c.completed_at < cutoff,
    )
    if after is not None:
        completed_at, job_id = after
        query = query.where(
            or_(
                export_jobs.c.completed_at > completed_at,
                and_(export_jobs.c.completed_at == completed_at, export_jobs.c.id > job_id),
            )
        )
    rows = conn.execute(query.order_by(export_jobs.c.completed_at, export_jobs.c.id).limit(limit))
    return [ExportJob.from_row(row) for row in rows]


def mark_file_deleted(
    conn: Connection,
    job_id: uuid.UUID,
    *,
    s3_key: str,
    message: str | None,
    only_if_status: str | None = None,
) -> bool:
    """The file is gone: clear the key and the link so that nobody is handed a dead link.

    Only if the row still names this key (compare-and-set); ``message`` replaces the
    error message unless it is None (a failed job keeps its reason).
    """
    values = {"s3_key": None, "download_url": None, "url_expires_at": None}
    if message is not None:
        values["error_message"] = message
    conditions = [export_jobs.c.s3_key == s3_key]
    if only_if_status is not None:  # e.g. a re-execution may have claimed it meanwhile
        conditions.append(export_jobs.c.status == only_if_status)
    return _compare_and_set(conn, job_id, conditions, **values)


def restore_object_key(conn: Connection, job: ExportJob) -> bool:
    """Undo mark_file_deleted when the delete itself failed: the file is still there, so
    the row gets back all it said of it (key, link and its expiry, message), as ``job``
    read it. Only while nobody else changed the row meanwhile (it still has no key, the
    same status and owning run): a re-execution that took the job over keeps it."""
    with safe_database_errors(f"restoring the file of export job {job.id}"):
        return _compare_and_set(
            conn,
            job.id,
            [
                export_jobs.c.s3_key.is_(None),
                export_jobs.c.status == job.status,
                export_jobs.c.dagster_run_id.is_not_distinct_from(job.dagster_run_id),
            ],
            s3_key=job.s3_key,
            download_url=job.download_url,
            url_expires_at=job.url_expires_at,
            error_message=job.error_message,
        )


def ended_with_objects(
    conn: Connection, limit: int, after_id: uuid.UUID | None = None
) -> list[ExportJob]:
    """Failed or cancelled jobs whose object could not be deleted yet (S3 was down when
    they ended), by id; with ``after_id``, those past it (as completed_before's ``after``)."""
    query = select(export_jobs).where(
        export_jobs.c.status.in_((JobStatus.FAILED, JobStatus.CANCELLED)),
        export_jobs.c.s3_key.is_not(None),
    )
    if after_id is not None:
        query = query.where(export_jobs.c.id > after_id)
    rows = conn.execute(query.order_by(export_jobs.c.id).limit(limit))
    return [ExportJob.from_row(row) for row in rows]
