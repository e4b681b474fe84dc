"""The statuses of an export job, as export_jobs.status holds them (as Dagster has
DagsterRunStatus): pending -> running -> completed | failed | cancelled.

A StrEnum: each member is its string, so comparisons with a row's status, SQL
parameters and JSON stay exactly what the literal strings were.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    # In the database enum's order: "cancelled" came with revision V0005, appended
    # (PostgreSQL adds enum values at the end).
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The statuses an export job ends in; each is announced once (export_notifications).
TERMINAL_JOB_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
# Those it may still leave.
OPEN_JOB_STATUSES = tuple(status for status in JobStatus if status not in TERMINAL_JOB_STATUSES)
