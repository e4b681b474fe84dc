"""Retention: export files are deleted after EXPORT_RETENTION_DAYS by a
daily schedule, and their job rows say so instead of keeping a dead link. Each deletion
is also an observation on the campaign's partition, so Dagster shows which partitions
still have a live file."""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg

from ..app_db import export_jobs
from ..app_db.job_status import JobStatus
from ..app_db.times import utcnow
from .export_checks import ASSET_KEY
from .failures import DeletionRefused, delete_job_file
from .partitions import campaigns_partitions
from .resources import AppDatabase, ExportDestination

BATCH = 500
# Refused deletions named one by one in the run's failure (all are in its log).
REFUSALS_SHOWN = 100


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
    they ended).

    A file S3 refuses to delete (a legal hold, a bucket policy) stays with its job, which
    keeps its key and link; the run moves past it, deletes every other file, then fails
    naming each refused job and key, so operators notice (the next run tries again)."""
    cutoff = utcnow() - timedelta(days=destination.retention_days)
    objects = destination.objects()
    message = retention_message(destination.retention_days)
    deleted = 0
    refused: list[DeletionRefused] = []
    for job in _jobs_with_files_to_delete(app_db, cutoff):
        try:
            # A completed job's row says why its link is gone; a failed one keeps its reason.
            if not delete_job_file(
                app_db, objects, job, message if job.status == JobStatus.COMPLETED else None
            ):
                continue  # the row changed since it was read (a re-execution took it)
        except DeletionRefused as error:
            refused.append(error)
            context.log.warning(
                f"S3 refused to delete the file of {job.status} export job {job.id}: {error}"
            )
            continue
        if job.status == JobStatus.COMPLETED:
            _observe_deletion(context, app_db, objects, job, cutoff, destination.retention_days)
        deleted += 1
    summary = (
        f"deleted {deleted} export files (completed before {cutoff:%Y-%m-%d}, failed or cancelled)"
    )
    if refused:
        raise dg.Failure(
            description=f"{summary}; S3 refused to delete {len(refused)}: "
            + ", ".join(f"job {error.job.id} ({error.uri})" for error in refused[:3])
            + (", ..." if len(refused) > 3 else ""),
            metadata={
                "deleted_files": deleted,
                "refused_deletions": len(refused),
                "refused": dg.MetadataValue.json(
                    [
                        {
                            "export_job_id": str(error.job.id),
                            "status": error.job.status,
                            "s3_key": error.job.s3_key,
                            "reason": error.reason,
                        }
                        for error in refused[:REFUSALS_SHOWN]
                    ]
                ),
            },
        )
    context.log.info(summary)
    context.add_output_metadata({"deleted_files": deleted, "refused_deletions": 0})
    return deleted


def _jobs_with_files_to_delete(app_db: AppDatabase, cutoff) -> Iterator[export_jobs.ExportJob]:
    """Expired completed jobs oldest first, then failed or cancelled ones that still name a
    file, page by page; each page starts past the last one, so files that stay (S3
    refused) never hold up the rest."""
    after = None
    while True:
        with app_db.engine.connect() as conn:
            page = export_jobs.completed_before(conn, cutoff, BATCH, after=after)
        yield from page
        if len(page) < BATCH:
            break
        after = (page[-1].completed_at, page[-1].id)
    after_id = None
    while True:
        with app_db.engine.connect() as conn:
            page = export_jobs.ended_with_objects(conn, BATCH, after_id=after_id)
        yield from page
        if len(page) < BATCH:
            break
        after_id = page[-1].id


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
