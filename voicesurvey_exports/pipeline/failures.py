"""One-line failure reasons a person can act on, and what a failed export leaves behind."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from ..app_db import export_jobs
from ..app_db.job_status import JobStatus
from ..export_file.s3_object import describe_s3_error


def one_line(text: str, limit: int = 300) -> str:
    """Collapse a message to one short line (job rows and CLI output show one line)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ExportCancelled(Exception):
    """The export job's user asked to cancel it, or it is no longer this run's: its work
    stops here (raised by the progress reports of a running export)."""


def permanent_failure(description: str) -> dg.Failure:
    """A failure that retrying cannot fix (bad request data): fail the run at once."""
    return dg.Failure(description=one_line(description), allow_retries=False)


def reason_from_step_failures(step_failures: Sequence[dg.DagsterEvent]) -> str | None:
    """The first failed step's reason: a dg.Failure's description, else the root exception."""
    for event in step_failures:
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return one_line(data.user_failure_data.description)
        error = data.error
        # Dagster wraps the op's exception; the root cause is what a person can act on.
        while error is not None and (error.cause or error.context) is not None:
            error = error.cause or error.context
        if error is not None:
            # The message starts with the exception's module path; keep class and text.
            message = error.message.split(": ", 1)[-1] if ": " in error.message else error.message
            op_name = event.step_key.rsplit(".", 1)[-1]  # graph asset steps are asset.op
            return one_line(f"{op_name} failed: {error.cls_name}: {message}")
    return None


def reason_from_exception(op_name: str, error: BaseException) -> str:
    """As reason_from_step_failures, for an exception caught in the op itself."""
    if isinstance(error, dg.Failure) and error.description:
        return one_line(error.description)
    # The root cause, but never a suppressed context (`raise ... from None`): a safe
    # database error hides its original there, with the bound parameters.
    while True:
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is None:
            break
        error = cause
    return one_line(f"{op_name} failed: {type(error).__name__}: {error}")


def end_job_and_delete_file(
    app_db,
    destination,
    job_id,
    reason: str,
    run_id: str | None,
    log,
    status: JobStatus = JobStatus.FAILED,
) -> bool:
    """End the job `failed` (or `cancelled`) if `run_id` may (export_jobs.mark_failed), then
    delete its file if it ended and names one (here or before); return whether this call
    ended it. A job whose user asked to cancel it ends `cancelled` whatever stopped its
    run (export_jobs decides that): the cancel is why it stopped."""
    with app_db.engine.begin() as conn:
        end = (
            export_jobs.mark_cancelled if status == JobStatus.CANCELLED else export_jobs.mark_failed
        )
        ended = end(conn, job_id, reason, run_id=run_id)
        job = export_jobs.get_job(conn, job_id)
    if job is not None and job.status in (JobStatus.FAILED, JobStatus.CANCELLED) and job.s3_key:
        delete_file_of_ended_job(app_db, destination, job, log)
    return ended


def delete_file_of_ended_job(app_db, destination, job: export_jobs.ExportJob, log) -> None:
    """A job that ends failed or cancelled leaves no file behind. If S3 refuses, the key
    stays on the row and the retention job deletes the file later."""
    try:
        delete_job_file(app_db, destination.objects(), job, message=None)
    except DeletionRefused as refused:  # S3 down: retention retries; never block other jobs
        log.warning(f"could not delete the file of {job.status} export job {job.id} yet: {refused}")


class DeletionRefused(Exception):
    """S3 refused to delete a job's file (a legal hold, a bucket policy, an outage): the
    file and the row's key, link and message are as they were."""

    def __init__(self, job: export_jobs.ExportJob, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.job, self.uri, self.reason = job, uri, reason


def delete_job_file(app_db, objects, job: export_jobs.ExportJob, message: str | None) -> bool:
    """Delete the file the job's row names (``job`` as read); False when the row no longer
    names it as read (nothing deleted). Raises DeletionRefused when S3 refuses.

    The row first: a compare-and-set on its status and key takes the key (and link) off,
    so a re-execution that takes a failed job over afterwards cannot complete with this
    object, and one that took it over before makes the compare-and-set fail, so its file
    is never deleted. Then the object goes; should S3 refuse, the row gets back all it had
    (key, link, message), unless a re-execution took the job over meanwhile. ``message``
    replaces the job's error message (None keeps it)."""
    with app_db.engine.begin() as conn:
        if not export_jobs.mark_file_deleted(
            conn, job.id, s3_key=job.s3_key, message=message, only_if_status=job.status
        ):
            return False
    objects = objects.in_bucket(job.s3_bucket)
    try:
        objects.delete(job.s3_key)
    except Exception as error:
        with app_db.engine.begin() as conn:
            restored = export_jobs.restore_object_key(conn, job)
        reason = describe_s3_error(error)
        if not restored:  # a re-execution holds the job now and writes a file of its own
            reason += "; no job names the file any more (the bucket's lifecycle rule expires it)"
        raise DeletionRefused(job, objects.uri(job.s3_key), reason) from error
    return True
