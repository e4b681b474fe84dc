"""The campaigns of one run, and what a failure of one of them does.

A run of one campaign (a request, one partition from the UI) lets a failure fail the
step, as Dagster does it: the op's retry policy, then the run fails and the failure
sensor fails the export job. A backfill run of several campaigns isolates them: each
campaign gets the op's retries on its own, and one that still fails ends its own export
job failed (its file deleted) and drops out of the run's later steps while the others
go on; the last op then fails the run naming the campaigns that failed.

A campaign whose user asked to cancel its export job (failures.ExportCancelled) is not a
failure: a run of one campaign ends CANCELED in Dagster, as a Terminate from the UI does
(the cancelled-run sensor ends the job); in a backfill run the campaign ends its job
`cancelled`, without retries, and drops out while the others finish, and the run does not
fail for it. Operators alert on failed runs; a user's cancel must not page them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import dagster as dg

from ..app_db import export_jobs
from ..app_db.job_status import JobStatus
from .failures import (
    ExportCancelled,
    end_job_and_delete_file,
    one_line,
    permanent_failure,
    reason_from_exception,
)
from .resources import AppDatabase, ExportDestination

Item = TypeVar("Item")
Result = TypeVar("Result")

# Which export job and campaign an item belongs to.
JobRef = tuple[uuid.UUID | None, uuid.UUID]


class CampaignBatch:
    def __init__(
        self,
        context: dg.OpExecutionContext,
        app_db: AppDatabase,
        destination: ExportDestination,
    ):
        self.context, self.app_db, self.destination = context, app_db, destination
        # (A re-execution launched without its parent's tags is not partitioned: one job.)
        self.partition_keys = list(context.partition_keys) if context.has_partitions else []
        self.isolated = len(self.partition_keys) > 1

    def each(
        self,
        items: Sequence[tuple[Item, JobRef]],
        work: Callable[[Item, int], Result],
        retry_policy: dg.RetryPolicy | None = None,
    ) -> list[Result]:
        """work(item, attempt) for each item (attempt counts from 0), in order."""
        try:
            return self._each(items, work, retry_policy)
        except ExportCancelled as error:
            # A run of one campaign. Its user's cancel: the run is marked CANCELING first,
            # so that Dagster ends it CANCELED (not FAILURE) when the step fails, exactly
            # as when export_cancel_sensor terminates it; the cancelled-run sensor then
            # ends the job. A job taken over by another run is a failure, as before.
            if self._user_cancelled_a_job_of_this_run():
                self._report_run_canceling(str(error))
            raise permanent_failure(str(error)) from None
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
            # Dagster counts an interrupt against the op's retry policy and runs the step
            # again, so a run terminated from the UI would carry on; end the step instead.
            if self._run_is_being_terminated():
                raise permanent_failure("the run was terminated") from None
            raise

    def _user_cancelled_a_job_of_this_run(self) -> bool:
        with self.app_db.engine.connect() as conn:
            jobs = export_jobs.running_jobs_of_runs(conn, [self.context.run_id])
        return any(job.cancel_requested_at is not None for job in jobs)

    def _report_run_canceling(self, reason: str) -> None:
        if self._run_is_being_terminated():
            return  # the cancel sensor (or the UI) got there first
        run = self.context.instance.get_run_by_id(self.context.run_id) or self.context.run
        self.context.instance.report_run_canceling(
            run, message=f"{reason} (at its user's request): ending the run canceled"
        )

    def _run_is_being_terminated(self) -> bool:
        run = self.context.instance.get_run_by_id(self.context.run_id)
        # CANCELED too: force-terminated from the UI, or past run monitoring's cancel
        # timeout while the interrupt waited for a database call to return.
        return run is not None and run.status in (
            dg.DagsterRunStatus.CANCELING,
            dg.DagsterRunStatus.CANCELED,
        )

    def _each(self, items, work, retry_policy):
        if not self.isolated:
            return [work(item, self.context.retry_number) for item, _ in items]
        results = []
        for item, (job_id, campaign_id) in items:
            attempt = 0
            while True:
                try:
                    results.append(work(item, attempt))
                    break
                except ExportCancelled as error:
                    self._fail(job_id, campaign_id, str(error), status=JobStatus.CANCELLED)
                    break
                except Exception as error:
                    permanent = isinstance(error, dg.Failure) and not error.allow_retries
                    if not permanent and retry_policy and attempt < retry_policy.max_retries:
                        time.sleep((retry_policy.delay or 0) * 2**attempt)
                        attempt += 1
                        continue
                    self._fail(job_id, campaign_id, reason_from_exception(self._op_name, error))
                    break
        return results

    @property
    def _op_name(self) -> str:
        return self.context.op_handle.name

    def _fail(
        self,
        job_id: uuid.UUID | None,
        campaign_id: uuid.UUID,
        reason: str,
        status: JobStatus = JobStatus.FAILED,
    ) -> None:
        self.context.log.error(f"campaign {campaign_id}: {reason}")
        if job_id is None:
            return
        end_job_and_delete_file(
            self.app_db,
            self.destination,
            job_id,
            reason,
            self.context.run_id,
            self.context.log,
            status=status,
        )

    def raise_if_any_failed(self, completed: set[str], cancelled: set[str]) -> None:
        """Fail the run naming the campaigns that neither completed nor were cancelled by
        their users (a cancel is not a failure)."""
        failed = [key for key in self.partition_keys if key not in completed | cancelled]
        if failed:
            shown = ", ".join(failed[:3]) + (", ..." if len(failed) > 3 else "")
            raise permanent_failure(
                one_line(
                    f"{len(failed)} of {len(self.partition_keys)} campaigns of this "
                    f"run failed ({shown}); each one's export job holds its reason"
                )
            )
