"""Queries on export_jobs: the request row's whole lifecycle.

pending -> running (the run starts) -> completed | failed. Status changes are
conditional updates, so a late or repeated event never moves a job backwards
from ``completed``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, select

from .schema import campaigns, export_jobs


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

    @classmethod
    def from_row(cls, row) -> ExportJob:
        values = dict(row._mapping)
        for name in ("url_expires_at", "created_at", "completed_at"):
            values[name] = as_utc(values[name])
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        """The job as the CLI and the app show it: ids as strings, ISO 8601 UTC times."""
        out = {"job_id": str(self.id)}
        for name, value in asdict(self).items():
            if name == "id":
                continue
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = iso_utc(value)
            out[name] = value
        return out


@dataclass(frozen=True)
class PendingJob:
    id: uuid.UUID
    campaign_id: uuid.UUID
    campaign_exists: bool


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything this project stores is UTC.
    if value is None or value.tzinfo is not None:
        return value if value is None else value.astimezone(UTC)
    return value.replace(tzinfo=UTC)


def iso_utc(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    return datetime.now(UTC)


def insert_job(
    conn: Connection,
    campaign_id: uuid.UUID,
    requested_by_user_id: uuid.UUID | None,
    status: str = "pending",
    job_id: uuid.UUID | None = None,
) -> ExportJob:
    row = conn.execute(
        export_jobs.insert()
        .values(
            id=job_id or uuid.uuid4(),
            campaign_id=campaign_id,
            requested_by_user_id=requested_by_user_id,
            status=status,
        )
        .returning(*export_jobs.c)
    ).one()
    return ExportJob.from_row(row)


def get_job(conn: Connection, job_id: uuid.UUID) -> ExportJob | None:
    row = conn.execute(select(export_jobs).where(export_jobs.c.id == job_id)).one_or_none()
    return None if row is None else ExportJob.from_row(row)


def list_jobs(conn: Connection, campaign_id: uuid.UUID) -> list[ExportJob]:
    rows = conn.execute(
        select(export_jobs)
        .where(export_jobs.c.campaign_id == campaign_id)
        .order_by(export_jobs.c.created_at.desc(), export_jobs.c.id.desc())
    )
    return [ExportJob.from_row(row) for row in rows]


def still_pending(conn: Connection, job_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    if not job_ids:
        return set()
    rows = conn.execute(
        select(export_jobs.c.id).where(
            export_jobs.c.id.in_(list(job_ids)), export_jobs.c.status == "pending"
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
        )
        .select_from(export_jobs.outerjoin(campaigns, campaigns.c.id == export_jobs.c.campaign_id))
        .where(export_jobs.c.status == "pending")
        .order_by(export_jobs.c.created_at, export_jobs.c.id)
        .limit(limit)
    )
    if exclude_ids:
        query = query.where(export_jobs.c.id.not_in(list(exclude_ids)))
    return [
        PendingJob(row.id, row.campaign_id, bool(row.campaign_exists))
        for row in conn.execute(query)
    ]


def mark_running(conn: Connection, job_id: uuid.UUID) -> None:
    """A run has started on the job; a re-executed failed job starts afresh."""
    conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job_id)
        .values(
            status="running",
            error_message=None,
            s3_key=None,
            download_url=None,
            url_expires_at=None,
            total_records=None,
            completed_at=None,
        )
    )


def mark_completed(
    conn: Connection,
    job_id: uuid.UUID,
    *,
    s3_key: str,
    download_url: str,
    url_expires_at: datetime,
    total_records: int,
) -> None:
    conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job_id)
        .values(
            status="completed",
            s3_key=s3_key,
            download_url=download_url,
            url_expires_at=url_expires_at,
            total_records=total_records,
            error_message=None,
            completed_at=utcnow(),
        )
    )


def mark_failed(conn: Connection, job_id: uuid.UUID, error_message: str) -> bool:
    """Fail a job that is not finished yet; return whether this call failed it."""
    result = conn.execute(
        export_jobs.update()
        .where(and_(export_jobs.c.id == job_id, export_jobs.c.status.in_(("pending", "running"))))
        .values(status="failed", error_message=error_message, completed_at=utcnow())
    )
    return result.rowcount == 1


def update_download_url(
    conn: Connection, job_id: uuid.UUID, download_url: str, url_expires_at: datetime
) -> None:
    conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job_id)
        .values(download_url=download_url, url_expires_at=url_expires_at)
    )


def completed_before(conn: Connection, cutoff: datetime, limit: int) -> list[ExportJob]:
    """Completed jobs older than the cutoff whose file has not been deleted yet."""
    rows = conn.execute(
        select(export_jobs)
        .where(
            export_jobs.c.status == "completed",
            export_jobs.c.s3_key.is_not(None),
            export_jobs.c.completed_at < cutoff,
        )
        .order_by(export_jobs.c.completed_at)
        .limit(limit)
    )
    return [ExportJob.from_row(row) for row in rows]


def mark_file_deleted(conn: Connection, job_id: uuid.UUID, message: str) -> None:
    """The file is gone: clear the key and the link so that nobody is handed a dead link."""
    conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job_id)
        .values(s3_key=None, download_url=None, url_expires_at=None, error_message=message)
    )
