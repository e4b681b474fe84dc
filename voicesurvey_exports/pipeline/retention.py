"""Retention: export files are deleted after EXPORT_RETENTION_DAYS by a
daily schedule, and their job rows say so instead of keeping a dead link. Each deletion
is also an observation on the campaign's partition, so Dagster shows which partitions
still have a live file."""

from datetime import timedelta

import dagster as dg

from ..app_db import export_jobs
from .export_checks import ASSET_KEY
from .partitions import campaigns_partitions
from .resources import AppDatabase, ExportDestination

BATCH = 500


def retention_message(days: int) -> str:
    return f"the file was deleted after {days} days (retention); request a new export"


@dg.op
def delete_expired_exports(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
) -> int:
    """Delete files of exports completed more than retention_days ago and clear their
    links; also delete files that failed or cancelled jobs still name (S3 was down when
    they ended)."""
    cutoff = export_jobs.utcnow() - timedelta(days=destination.retention_days)
    objects = destination.objects()
    message = retention_message(destination.retention_days)
    deleted = 0
    seen: set = set()
    while True:
        with app_db.engine.connect() as conn:
            batch = export_jobs.completed_before(conn, cutoff, BATCH) + (
                export_jobs.ended_with_objects(conn, BATCH)
            )
        batch = [job for job in batch if job.id not in seen]
        if not batch:
            break
        for job in batch:
            seen.add(job.id)
            if job.status == "completed":
                # Row first (compare-and-set on the key): refresh-url can no longer store
                # or hand out a link to this file. Should S3 refuse the delete, the key
                # goes back on the row, so the file is never left unfindable.
                with app_db.engine.begin() as conn:
                    if not export_jobs.mark_file_deleted(
                        conn, job.id, s3_key=job.s3_key, message=message, only_if_status="completed"
                    ):
                        continue
                try:
                    objects.in_bucket(job.s3_bucket).delete(job.s3_key)
                except Exception:
                    with app_db.engine.begin() as conn:
                        export_jobs.restore_object_key(conn, job.id, job.s3_key)
                    raise
                _observe_deletion(context, app_db, objects, job, cutoff, destination.retention_days)
            else:
                # A failed or cancelled job has no link: delete the file, then forget its key.
                objects.in_bucket(job.s3_bucket).delete(job.s3_key)
                with app_db.engine.begin() as conn:
                    export_jobs.mark_file_deleted(
                        conn, job.id, s3_key=job.s3_key, message=None, only_if_status=job.status
                    )
            deleted += 1
    context.log.info(
        f"deleted {deleted} export files (completed before {cutoff:%Y-%m-%d}, failed or cancelled)"
    )
    context.add_output_metadata({"deleted_files": deleted})
    return deleted


def _observe_deletion(context, app_db, objects, job, cutoff, days: int) -> None:
    """Record on the campaign's partition that its file is gone (the materialisation's
    `dagster/uri` is dead now), and whether another completed export's file is live."""
    partition = str(job.campaign_id)
    if not context.instance.has_dynamic_partition(campaigns_partitions.name, partition):
        return  # the campaign is gone, and its partition with it
    with app_db.engine.connect() as conn:
        live = export_jobs.has_live_file(conn, job.campaign_id, completed_after=cutoff)
    context.log_event(
        dg.AssetObservation(
            asset_key=ASSET_KEY,
            partition=partition,
            description=f"export file deleted after {days} days (retention)",
            metadata={
                "live_file": dg.MetadataValue.bool(live),
                "deleted_uri": dg.MetadataValue.text(
                    objects.in_bucket(job.s3_bucket).uri(job.s3_key)
                ),
                "export_job_id": dg.MetadataValue.text(str(job.id)),
            },
        )
    )


@dg.job(description="Deletes export files past their retention and clears their links.")
def export_retention_job():
    delete_expired_exports()


export_retention_schedule = dg.ScheduleDefinition(
    job=export_retention_job,
    cron_schedule="15 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
