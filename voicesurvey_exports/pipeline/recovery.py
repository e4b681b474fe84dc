"""What a run does because it may not be the first run of its job: retries, re-executions
("re-execute from failure"), takeovers. The rules:

1. A run writes only a job it owns: it claims the row first (compare-and-set). Any run
   may take a pending job; a retry or re-execution may also take back a failed job, or
   a running one whose owner has finished, from its own run group. Nobody takes a
   completed or cancelled job.
2. A run that skipped an op loads its parent's small outputs but not its files (they
   were on the parent's disk): it claims the job, then makes the files again.
3. Each run writes its own object. A run that took a job over deletes the earlier run's
   object before recording its own key; a run that lost its job deletes its own object.
4. A re-execution completes the job with its parent's object only while the row still
   names it and it exists (a failure clean-up takes the key off the row before it
   deletes); else it exports again.
5. A backfill run's job ids are its run group's own (batch_job_id), so a re-execution
   finds the rows its parent inserted; a campaign its group completed stays completed.
"""

import uuid
from pathlib import Path

import dagster as dg

from ..app_db import export_jobs
from ..app_db.job_status import JobStatus
from ..export_file.s3_object import ExportObjects, describe_s3_error
from .export_steps import (
    ExportTarget,
    ExtractedContacts,
    RenderedCsv,
    UploadedCsv,
    check_stored_file,
    extract_contacts,
    object_key,
    record_key,
    render_file,
    upload_file,
)
from .failures import ExportCancelled, permanent_failure
from .resources import AppDatabase
from .spool import SpoolStorage


def claim_export_job(context: dg.OpExecutionContext, conn, job: export_jobs.ExportJob) -> None:
    """Make this run the job's owner (rule 1), or fail with the reason it may not be."""
    run = context.run
    from_statuses = [JobStatus.PENDING]
    owner = context.instance.get_run_by_id(job.dagster_run_id) if job.dagster_run_id else None
    same_group = owner is None or (owner.root_run_id or owner.run_id) == (
        run.root_run_id or run.run_id
    )
    if run.parent_run_id is not None and same_group:
        from_statuses.append(JobStatus.FAILED)
        # Never from a sibling that is still at work (two re-executions at once).
        if owner is None or owner.is_finished:
            from_statuses.append(JobStatus.RUNNING)
    if export_jobs.claim_job(conn, job.id, context.run_id, from_statuses) is not None:
        return
    if job.status == JobStatus.COMPLETED:
        # Its file stays what its link promised.
        raise permanent_failure(
            f"export job {job.id} is already completed; materialise the campaign's partition "
            "for a new export"
        )
    if job.status == JobStatus.CANCELLED or job.cancel_requested_at is not None:
        raise permanent_failure(f"export job {job.id} was cancelled by its user")
    raise permanent_failure(
        f"export job {job.id} is {job.status} under run {job.dagster_run_id}; "
        f"run {context.run_id} may not take it over"
    )


def ensure_claimed(
    context: dg.OpExecutionContext, app_db: AppDatabase, spool: SpoolStorage, target: ExportTarget
) -> None:
    """In a retry or re-execution that did not re-run extract_terminal_contacts, claim the job
    (and remove what a killed parent run left in the spool on this machine)."""
    claim = (context.run_id, target.export_job_id)
    if target.claimed_by_run_id == context.run_id or claim in _CLAIMED:
        return
    with app_db.engine.begin() as conn:
        job = export_jobs.get_job(conn, target.export_job_id)
        if job is None:
            raise permanent_failure(f"export job {target.export_job_id} does not exist")
        if job.dagster_run_id != context.run_id:
            claim_export_job(context, conn, job)
    if context.run.parent_run_id:
        spool.remove(context.run.parent_run_id)
    _CLAIMED.add(claim)


# (run, export job) pairs this process has claimed (one run per process in production).
_CLAIMED: set[tuple[str, uuid.UUID]] = set()


def input_of_this_run(context, app_db, spool, target, upstream):
    """Claim the job, then return the upstream op's output if this run made its file and it
    is still there; else make it again (rule 2: removed on failure, or another machine)."""
    ensure_claimed(context, app_db, spool, target)
    path = upstream.spool_path if isinstance(upstream, ExtractedContacts) else upstream.path
    if upstream.run_id == context.run_id and Path(path).exists():
        return upstream
    context.log.info(f"the files of run {upstream.run_id} are gone; extracting again")
    extracted = extract_contacts(context, app_db, spool, target)
    if isinstance(upstream, ExtractedContacts):
        return extracted
    return render_file(context, extracted, target)


def record_own_key(
    context, app_db: AppDatabase, objects: ExportObjects, target: ExportTarget
) -> str:
    """Record this run's key on the job (rule 3), after deleting the object of an earlier
    run that the row still names (this run took the job over: its file replaces it)."""
    _delete_earlier_runs_object(context, app_db, objects, target)
    return record_key(context, app_db, objects, target)


def upload_own_object(
    context, app_db: AppDatabase, objects: ExportObjects, rendered: RenderedCsv, key: str
) -> UploadedCsv:
    """Upload to this run's key; an upload stopped by a cancel or a takeover (rule 3)
    deletes what it wrote, unless the job names it."""
    try:
        return upload_file(context, objects, rendered, key)
    except ExportCancelled:
        delete_unless_the_jobs(app_db, objects, rendered.export_job_id, key)
        raise


def _delete_earlier_runs_object(context, app_db, objects: ExportObjects, target) -> None:
    key = object_key(context, objects, target)
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, target.export_job_id)
    if job is None or job.dagster_run_id != context.run_id or job.s3_key in (None, key):
        return
    earlier = objects.in_bucket(job.s3_bucket)
    try:
        earlier.delete(job.s3_key)
    except Exception as error:
        # Not this export's concern (e.g. the earlier run's bucket is gone): the bucket's
        # lifecycle rule expires what is left.
        context.log.warning(
            f"could not delete {earlier.uri(job.s3_key)}, the object of an earlier run "
            f"of export job {job.id}: {describe_s3_error(error)}"
        )


def delete_unless_the_jobs(app_db, objects: ExportObjects, export_job_id, key: str) -> None:
    """Delete this run's object unless its job names it: once another run took the job
    over (run monitoring failed this run while its worker lived on, and a retry runs), or
    the job ended without it, nobody would find it. The winner's object is another key."""
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, export_job_id)
    if job is None or job.s3_key != key:
        objects.delete(key)


def completed_by_its_group(context, app_db, target, uploaded, in_batch: bool):
    """In a re-executed backfill run, the job of a campaign an earlier run of the group
    completed (rule 5); else None."""
    if not (in_batch and context.run.parent_run_id and uploaded is not None):
        return None
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, target.export_job_id)
    return job if job is not None and job.status == JobStatus.COMPLETED else None


def file_to_complete(
    context, app_db, objects, spool, target, uploaded, blocking: bool, checks: list
) -> UploadedCsv:
    """The object record_export completes the job with: the uploaded one, or one made again
    (rule 4), checked as upload_csv checks it (evaluations added to `checks`)."""
    ensure_claimed(context, app_db, spool, target)
    if uploaded is None:
        # Re-executing a backfill run: a campaign that failed in the run re-executed.
        context.log.info(f"campaign {target.campaign_id} failed before; exporting again")
    elif uploaded.run_id != context.run_id and not _still_the_jobs_file(app_db, objects, uploaded):
        # Re-executed after a failure whose clean-up deleted (or is deleting) the parent's
        # file: make it again.
        context.log.info(f"the file of run {uploaded.run_id} is gone; exporting again")
    else:
        return uploaded
    rendered = render_file(context, extract_contacts(context, app_db, spool, target), target)
    key = record_own_key(context, app_db, objects, target)
    uploaded = upload_own_object(context, app_db, objects, rendered, key)
    check_stored_file(objects, target, rendered, uploaded, checks, blocking)
    return uploaded


def _still_the_jobs_file(app_db, objects: ExportObjects, uploaded: UploadedCsv) -> bool:
    """Whether the job this run has claimed still names the parent run's object, and it
    exists. A failure clean-up takes the key off the row before it deletes the object:
    once this run has claimed the job, a row that names the object keeps it."""
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, uploaded.export_job_id)
    return (
        job is not None
        and job.s3_key == uploaded.s3_key
        and objects.in_bucket(uploaded.bucket).exists(uploaded.s3_key)
    )


# Export job ids of backfill runs: one per run group and campaign, so that a retry or
# re-execution of a backfill run finds (and claims) the rows its parent inserted.
BATCH_JOB_NAMESPACE = uuid.UUID("8d4f3c52-6a0e-4d8e-9c57-2f1a4c7b9e10")


def batch_job_id(run: dg.DagsterRun, campaign_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(BATCH_JOB_NAMESPACE, f"{run.root_run_id or run.run_id}/{campaign_id}")


def batch_job_ref(run: dg.DagsterRun, partition_key: str) -> tuple:
    """(export job id, campaign id) of a backfill run's partition; (None, key) for a key
    that is not a campaign id (it fails only its own campaign)."""
    try:
        campaign_id = uuid.UUID(partition_key)
    except ValueError:
        return None, partition_key
    return batch_job_id(run, campaign_id), campaign_id
