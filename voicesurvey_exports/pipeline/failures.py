"""One-line failure reasons a person can act on, and what a failed export leaves behind."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from ..app_db import export_jobs
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
    app_db, destination, job_id, reason: str, run_id: str | None, log, status: str = "failed"
) -> bool:
    """End the job `failed` (or `cancelled`) if `run_id` may (export_jobs.mark_failed), then
    delete its file if it ended and names one (here or before); return whether this call
    ended it. A job whose user asked to cancel it ends `cancelled` whatever stopped its
    run (export_jobs decides that): the cancel is why it stopped."""
    with app_db.engine.begin() as conn:
        end = export_jobs.mark_cancelled if status == "cancelled" else export_jobs.mark_failed
        ended = end(conn, job_id, reason, run_id=run_id)
        job = export_jobs.get_job(conn, job_id)
    if job is not None and job.status in ("failed", "cancelled") and job.s3_key:
        delete_file_of_ended_job(app_db, destination, job, log)
    return ended


def delete_file_of_ended_job(app_db, destination, job: export_jobs.ExportJob, log) -> None:
    """A job that ends failed or cancelled leaves no file behind. If S3 refuses, the key
    stays on the row and the retention job deletes the file later."""
    try:
        destination.objects().in_bucket(job.s3_bucket).delete(job.s3_key)
    except Exception as error:  # S3 down: retention retries; never block other jobs
        log.warning(
            f"could not delete the file of {job.status} export job {job.id} yet: "
            f"{describe_s3_error(error)}"
        )
        return
    with app_db.engine.begin() as conn:
        export_jobs.mark_file_deleted(
            conn, job.id, s3_key=job.s3_key, message=None, only_if_status=job.status
        )
