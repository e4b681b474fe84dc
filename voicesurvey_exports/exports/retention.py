"""Retention: export files are deleted after EXPORT_RETENTION_DAYS (default 30) by a
daily schedule, and their job rows say so instead of keeping a dead link."""

from datetime import timedelta

import dagster as dg
from dagster_aws.s3 import S3Resource

from ..app_db import export_jobs
from .resources import AppDatabase, ExportDestination

BATCH = 500


def retention_message(days: int) -> str:
    return f"the file was deleted after {days} days (retention); request a new export"


@dg.op
def delete_expired_exports(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    s3: S3Resource,
    destination: ExportDestination,
) -> int:
    """Delete files of exports completed more than retention_days ago; clear their links."""
    cutoff = export_jobs.utcnow() - timedelta(days=destination.retention_days)
    client = s3.get_client()
    deleted = 0
    while True:
        with app_db.engine.connect() as conn:
            batch = export_jobs.completed_before(conn, cutoff, BATCH)
        if not batch:
            break
        for job in batch:
            client.delete_object(Bucket=destination.bucket, Key=job.s3_key)
            with app_db.engine.begin() as conn:
                export_jobs.mark_file_deleted(
                    conn, job.id, retention_message(destination.retention_days)
                )
            deleted += 1
    context.log.info(f"deleted {deleted} export files older than {cutoff:%Y-%m-%d}")
    context.add_output_metadata({"deleted_files": deleted})
    return deleted


@dg.job(description="Deletes export files past their retention and clears their links.")
def export_retention_job():
    delete_expired_exports()


export_retention_schedule = dg.ScheduleDefinition(
    job=export_retention_job,
    cron_schedule="15 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
