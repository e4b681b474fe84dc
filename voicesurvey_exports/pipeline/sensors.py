"""Sensors: export requests in, campaign partitions in step, failures and cancellations out
(a user's cancel reaches the run here too), requests that wait too long reported."""

import json
import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import dagster as dg

from ..app_db import export_jobs
from ..app_db.campaigns import all_campaign_ids
from ..app_db.export_jobs import CANCELLED_BY_USER
from ..app_db.job_status import JobStatus
from ..settings import Settings
from .assets import EXPORT_JOB_TAG, REQUESTS_SENSOR, SENSOR_NAME_TAG, campaign_export_job
from .failures import (
    end_job_and_delete_file,
    one_line,
    reason_from_step_failures,
)
from .partitions import campaigns_partitions
from .resources import AppDatabase, ExportDestination

# How often a waiting request-sensor tick looks again (one indexed query on the app
# database's pending jobs, on the connection the tick holds while it waits).
WAITING_TICK_POLL_SECONDS = 0.25


def build_export_requests_sensor(settings: Settings) -> dg.SensorDefinition:
    interval_seconds, batch_size = settings.sensor_interval_seconds, settings.sensor_batch_size
    wait_seconds = settings.sensor_wait_seconds

    @dg.sensor(
        name=REQUESTS_SENSOR,
        job=campaign_export_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches one campaign_export run per pending export_jobs row, oldest first.",
    )
    def export_requests_sensor(
        context: dg.SensorEvaluationContext, app_db: AppDatabase
    ) -> dg.SensorResult:
        # The cursor holds the jobs already handed to Dagster whose runs have not
        # started yet (their rows are still pending), so a queue of waiting runs never
        # hides newer requests. run_key = job id makes a repeat (e.g. after a cursor
        # reset) a no-op.
        handed_over = {uuid.UUID(job_id) for job_id in json.loads(context.cursor or "[]")}
        # Dagster's daemon starts a sensor tick at most every 5 s, whatever the sensor's
        # minimum interval: a tick that finds nothing new keeps looking for up to
        # EXPORT_SENSOR_WAIT_SECONDS, so that a request waits about a quarter second for
        # its run rather than 2.5 s on average. The waiting holds one of the code
        # server's threads (the daemon's other sensors run beside it, sensors.use_threads),
        # which also start runs: a tick waits only while no run is queued or starting,
        # when a new request would wait behind those runs anyway.
        wait = wait_seconds if wait_seconds and not _runs_to_start(context.instance) else 0
        deadline = time.monotonic() + wait
        with app_db.engine.connect() as conn:
            handed_over = export_jobs.still_pending(conn, handed_over)
            conn.commit()
            while True:
                with conn.begin():
                    batch = export_jobs.next_pending_jobs(conn, handed_over, batch_size)
                    if batch or time.monotonic() + WAITING_TICK_POLL_SECONDS > deadline:
                        run_requests = _run_requests(conn, batch, handed_over)
                        break
                time.sleep(WAITING_TICK_POLL_SECONDS)
        new_partitions = sorted(
            {request.partition_key for request in run_requests}
            - set(context.instance.get_dynamic_partitions(campaigns_partitions.name))
        )
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=(
                [campaigns_partitions.build_add_request(new_partitions)] if new_partitions else []
            ),
            cursor=json.dumps(sorted(str(job_id) for job_id in handed_over)),
        )

    return export_requests_sensor


def _runs_to_start(instance: dg.DagsterInstance) -> bool:
    """Whether any run of the instance is queued or on its way to starting."""
    waiting = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
    ]
    return instance.get_runs_count(filters=dg.RunsFilter(statuses=waiting)) > 0


def _run_requests(
    conn, batch: list[export_jobs.PendingJob], handed_over: set[uuid.UUID]
) -> list[dg.RunRequest]:
    """A run request per pending job (added to handed_over); a job that cannot run
    (its campaign is gone, an option this release does not know) is failed instead."""
    run_requests = []
    for job in batch:
        if not job.campaign_exists:
            export_jobs.mark_failed(conn, job.id, f"campaign {job.campaign_id} does not exist")
            continue
        # A value written by SQL that this release does not know: fail it now.
        unknown = export_jobs.unknown_option(job)
        if unknown:
            export_jobs.mark_failed(conn, job.id, unknown)
            continue
        run_requests.append(
            dg.RunRequest(
                run_key=str(job.id),
                partition_key=str(job.campaign_id),
                tags={EXPORT_JOB_TAG: str(job.id)},
            )
        )
        handed_over.add(job.id)
    return run_requests


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps the campaigns partitions equal to the campaigns table, so any "
    "campaign can be materialised or backfilled from the UI.",
)
def campaign_partitions_sensor(
    context: dg.SensorEvaluationContext, app_db: AppDatabase
) -> dg.SensorResult | dg.SkipReason:
    with app_db.engine.connect() as conn:
        in_database = all_campaign_ids(conn)
    in_dagster = set(context.instance.get_dynamic_partitions(campaigns_partitions.name))
    to_add, to_delete = sorted(in_database - in_dagster), sorted(in_dagster - in_database)
    if not to_add and not to_delete:
        return dg.SkipReason(f"{len(in_dagster)} campaign partitions already in step")
    requests = []
    if to_add:
        requests.append(campaigns_partitions.build_add_request(to_add))
    if to_delete:
        requests.append(campaigns_partitions.build_delete_request(to_delete))
    return dg.SensorResult(dynamic_partitions_requests=requests)


def build_stuck_requests_sensor(settings: Settings) -> dg.SensorDefinition:
    pending_limit = timedelta(minutes=settings.pending_alert_minutes)
    running_limit = timedelta(minutes=settings.running_alert_minutes)

    @dg.sensor(
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Fails its tick, naming the export jobs, while a request has waited `pending` "
            f"over {settings.pending_alert_minutes} min (EXPORT_PENDING_ALERT_MINUTES) or "
            f"stayed `running` over {settings.running_alert_minutes} min since it was made "
            "(EXPORT_RUNNING_ALERT_MINUTES): alerting on Dagster's sensor failures covers "
            "requests that the app's users see stuck."
        ),
    )
    def stuck_export_requests_sensor(context, app_db: AppDatabase) -> dg.SkipReason:
        now = datetime.now(UTC)
        with app_db.engine.connect() as conn:
            pending = export_jobs.waiting_jobs(conn, JobStatus.PENDING, now - pending_limit)
            running = export_jobs.waiting_jobs(conn, JobStatus.RUNNING, now - running_limit)
        if pending or running:
            raise StuckExportRequests(stuck_requests_message(pending, running, settings, now))
        return dg.SkipReason("no export request is waiting too long")

    return stuck_export_requests_sensor


class StuckExportRequests(Exception):
    pass


def stuck_requests_message(pending, running, settings: Settings, now: datetime) -> str:
    """One line: how many jobs wait too long in each state, the oldest first, with ids."""

    def listed(jobs) -> str:
        shown = ", ".join(
            f"{job.id} ({int((now - job.created_at).total_seconds() // 60)} min)"
            for job in jobs[:10]
        )
        return shown + (f" and {len(jobs) - 10} more" if len(jobs) > 10 else "")

    parts = []
    if pending:
        parts.append(
            f"{len(pending)} pending over {settings.pending_alert_minutes} min: {listed(pending)}"
        )
    if running:
        parts.append(
            f"{len(running)} running over {settings.running_alert_minutes} min: {listed(running)}"
        )
    return "export requests stuck: " + "; ".join(parts)


# Set by Dagster on a failed run that run retries (dagster.yaml run_retries) will re-run.
WILL_RETRY_TAG = "dagster/will_retry"


def _current_tags(context: dg.RunStatusSensorContext) -> Mapping[str, str]:
    # Re-read the run: a UI or backfill run tags itself after it starts, and Dagster
    # adds the will-retry tag after the failure.
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    return run.tags


def _export_job_id(tags: Mapping[str, str]) -> uuid.UUID | None:
    job_id = tags.get(EXPORT_JOB_TAG)
    return uuid.UUID(job_id) if job_id else None


def _failing_owner(context: dg.RunStatusSensorContext, owner: str | None) -> str | None:
    """The run whose failure may fail the job, or None when this run may not fail it.

    This run, when it owns the job; the job's owner, when that is an earlier, finished
    run of the same run group (a retry that died before it could claim the job must not
    leave it running forever); for a job no run has claimed yet, only the run that the
    request sensor launched for it (a UI run with a mistyped tag must not fail it).
    """
    run = context.dagster_run
    root_id = run.root_run_id or run.run_id
    if owner is None:
        root = context.instance.get_run_by_id(root_id) or run
        launched_for_it = REQUESTS_SENSOR in (
            run.tags.get(SENSOR_NAME_TAG),
            root.tags.get(SENSOR_NAME_TAG),
        )
        return run.run_id if launched_for_it else None
    if owner == run.run_id:
        return owner
    owner_run = context.instance.get_run_by_id(owner)
    same_group = owner_run is not None and (owner_run.root_run_id or owner_run.run_id) == root_id
    return owner if same_group and owner_run.is_finished else run.run_id


def end_export_job(
    context: dg.RunStatusSensorContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    reason: str,
    status: JobStatus,
) -> None:
    """End the run's export job `status` (failed or cancelled) if this run (or its finished
    run group) owns it, then delete any object the run wrote: a job that ends so leaves no
    file behind. A backfill run of several campaigns has no job tag: the jobs its run
    group still holds running end. Runs of other jobs own no export job and are ignored."""
    job_id = _export_job_id(_current_tags(context))
    if job_id is None:
        _end_jobs_of_run_group(context, app_db, destination, reason, status)
        return
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, job_id)
    if job is None:
        return
    owner = _failing_owner(context, job.dagster_run_id)
    if owner is None:
        context.log.info(f"run may not fail export job {job_id}: another run's request")
        return
    end_job_and_delete_file(app_db, destination, job_id, reason, owner, context.log, status)


def _end_jobs_of_run_group(
    context: dg.RunStatusSensorContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    reason: str,
    status: JobStatus,
) -> None:
    run = context.dagster_run
    try:
        group = context.instance.get_run_group(run.run_id)
    except Exception:  # the group's root run was deleted: this run alone
        group = None
    runs = group[1] if group else [run]
    # Finished runs only: a sibling re-execution that is still at work keeps its jobs.
    owners = [r.run_id for r in runs if r.is_finished or r.run_id == run.run_id]
    with app_db.engine.connect() as conn:
        jobs = export_jobs.running_jobs_of_runs(conn, owners)
    for job in jobs:
        end_job_and_delete_file(
            app_db, destination, job.id, reason, job.dagster_run_id, context.log, status
        )


# Run status sensors handle at most 5 runs per tick (Dagster's default) and tick every
# 30 s by default: 60 runs failing together in an S3 outage took minutes to show on their
# jobs. They tick every 2 s here, but plain `dagster-daemon run` looks at its sensors
# only every 5 s: 5 runs a tick would be 60 a minute, so the 60 runs' last job showed
# `failed` about a minute after its run ended. Dagster reads the runs-per-tick limit
# from the environment of the process that evaluates the sensor (this code location's):
# 25 keeps up with about 300 failing runs a minute on either daemon (SCALING.md). An
# operator's own setting wins.
RUN_STATUS_SENSOR_INTERVAL_SECONDS = 2
RUN_STATUS_SENSOR_PROCESS_LIMIT_VARIABLE = "DAGSTER_RUN_STATUS_SENSOR_PROCESS_LIMIT"
os.environ.setdefault(RUN_STATUS_SENSOR_PROCESS_LIMIT_VARIABLE, "25")


# No monitored_jobs: runs from the UI and backfills use Dagster's implicit asset job,
# so every job of this code location is watched; runs without the tag are ignored.
@dg.run_failure_sensor(
    name="export_run_failure_sensor",
    minimum_interval_seconds=RUN_STATUS_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks an export job failed, with a one-line reason, when its run fails, "
    "and deletes any file the run wrote.",
)
def export_run_failure_sensor(
    context: dg.RunFailureSensorContext,
    app_db: AppDatabase,
    destination: ExportDestination,
) -> None:
    if _current_tags(context).get(WILL_RETRY_TAG) == "true":
        # The retry run carries the same job tag and will complete or fail the job.
        context.log.info("run will be retried; its export job stays open")
        return
    reason = reason_from_step_failures(context.get_step_failure_events()) or one_line(
        f"export run {context.dagster_run.run_id} failed: {context.failure_event.message}"
    )
    end_export_job(context, app_db, destination, reason, JobStatus.FAILED)


@dg.run_status_sensor(
    name="export_run_canceled_sensor",
    run_status=dg.DagsterRunStatus.CANCELED,
    minimum_interval_seconds=RUN_STATUS_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks an export job cancelled when its run is cancelled (from the UI, or at "
    "the user's request), and deletes any file the run wrote.",
)
def export_run_canceled_sensor(
    context: dg.RunStatusSensorContext,
    app_db: AppDatabase,
    destination: ExportDestination,
) -> None:
    reason = f"export run {context.dagster_run.run_id} was cancelled in Dagster"
    end_export_job(context, app_db, destination, reason, JobStatus.CANCELLED)


# How long after a pending job was cancelled its launched run is looked for in the queue.
QUEUED_CANCEL_WINDOW = timedelta(minutes=10)


# A running export notices its cancel at its next progress report (within about a second
# while data flows); this sensor's termination is for a run that does not report (waiting
# on a lock, say), so every 5 s is enough for "cancelled within 30 s", and each tick costs
# the daemon and the code server CPU.
CANCEL_SENSOR_INTERVAL_SECONDS = 5


@dg.sensor(
    minimum_interval_seconds=CANCEL_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Carries out the cancels users ask for (`voicesurvey-exports cancel`, POST "
    "/api/exports/{job_id}/cancel) on running export jobs: terminates a request's run (the "
    "cancelled-run sensor then ends the job `cancelled` and deletes its file); a backfill run "
    "stops the campaign itself at its next progress report; a job whose run is already over "
    "is ended here; the queued run of a job cancelled while pending is taken off the queue.",
)
def export_cancel_sensor(
    context: dg.SensorEvaluationContext,
    app_db: AppDatabase,
    destination: ExportDestination,
) -> dg.SkipReason:
    with app_db.engine.connect() as conn:
        jobs = export_jobs.cancel_requested(conn)
        unclaimed = export_jobs.cancelled_before_claim(
            conn, since=datetime.now(UTC) - QUEUED_CANCEL_WINDOW
        )
    # Cancelled while pending, its run already launched: take the run out of the queue,
    # so that it neither starts a worker nor fails (it would, at its claim of the job).
    dequeued = []
    for job in unclaimed:
        queued = context.instance.get_runs(
            filters=dg.RunsFilter(
                tags={EXPORT_JOB_TAG: str(job.id)},
                statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED],
            )
        )
        for run in queued:
            context.instance.run_coordinator.cancel_run(run.run_id)
            dequeued.append(run.run_id)
    if not jobs:
        return dg.SkipReason(f"no cancel requested; queued runs cancelled: {dequeued or 'none'}")
    terminated, ended = [], []
    for job in jobs:
        run = context.instance.get_run_by_id(job.dagster_run_id) if job.dagster_run_id else None
        if run is None or run.is_finished:
            # Nothing else will end it: its run is over (or gone), or a retry of that run
            # was refused the job because of the cancel.
            if end_job_and_delete_file(
                app_db,
                destination,
                job.id,
                CANCELLED_BY_USER,
                job.dagster_run_id,
                context.log,
                JobStatus.CANCELLED,
            ):
                ended.append(str(job.id))
        elif run.tags.get(EXPORT_JOB_TAG) == str(job.id) and run.status not in (
            dg.DagsterRunStatus.CANCELING,
            dg.DagsterRunStatus.CANCELED,
        ):
            # The run exports this job only: terminate it, as the UI's Terminate does.
            context.instance.run_coordinator.cancel_run(run.run_id)
            terminated.append(run.run_id)
    return dg.SkipReason(
        f"{len(jobs)} cancels requested: terminated runs {terminated or 'none'}, "
        f"ended jobs {ended or 'none'}; queued runs cancelled: {dequeued or 'none'}"
    )
