"""The outbox of completion notifications (export_notifications).

Each export job that reaches completed, failed or cancelled gets one row per terminal
status, written by export_jobs in the transaction that ends the job, so that no end goes
unannounced and none is announced twice. The row holds the exact JSON body that is
signed and sent; the pipeline's webhook sensor delivers it. No download link and no
contact data ever go into a body.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from .schema import export_notifications

if TYPE_CHECKING:
    from .export_jobs import ExportJob

EVENTS = {status: f"export.{status}" for status in ("completed", "failed", "cancelled")}


def body_of(job: ExportJob) -> str:
    """The notification's JSON body: the job's outcome, nothing a reader could download."""
    from .export_jobs import iso_utc

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


def announce(conn: Connection, job: ExportJob) -> None:
    """Queue the notification of the job's terminal status (once per job and status)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(export_notifications)
        .values(id=uuid.uuid4(), export_job_id=job.id, event=EVENTS[job.status], body=body_of(job))
        .on_conflict_do_nothing(index_elements=["export_job_id", "event"])
    )
