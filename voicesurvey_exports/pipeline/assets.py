"""The campaign_export asset: a graph of small ops, one campaign partition per run.

start_export_job -> extract_terminal_contacts -> render_csv -> upload_csv -> record_export

The contact rows stream from the database to a spool file, through pandas in small
batches to the CSV file, and to S3 in multipart chunks, so memory stays flat at any
campaign size. Ops hand each other file paths and counts only; the spool folder is
private to the run and removed when it ends. Dagster's storage and UI see counts and
locations, never contact data.

Retries and "re-execute from failure" start a new run that loads the parent run's
small outputs (Dagster's filesystem IO manager) but not its files: an op whose input
file belongs to another run extracts again. Such a run first claims the job row, so a
run only ever writes the job it owns.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg

from ..app_db import export_jobs
from ..app_db.campaigns import get_campaign
from ..app_db.contacts import copy_terminal_contacts
from ..app_db.schema import TERMINAL_CONTACT_STATES
from ..export_file.csv_format import render_spool
from ..export_file.s3_object import ExportObjects, describe_s3_error
from .failures import permanent_failure
from .partitions import campaigns_partitions
from .resources import AppDatabase, ExportDestination
from .spool import SpoolStorage

# Run tag linking a run to its export_jobs row (set by the sensor, or by the run itself).
EXPORT_JOB_TAG = "export_job_id"
# Dagster's tag naming the sensor that launched a run, and the one that launches requests.
SENSOR_NAME_TAG = "dagster/sensor_name"
REQUESTS_SENSOR = "export_requests_sensor"
# Ops that hold an app database connection share this pool (limit in dagster.yaml).
APP_DATABASE_POOL = "app_database"

UPLOAD_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
DATABASE_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


@dataclass(frozen=True)
class ExportTarget:
    export_job_id: uuid.UUID
    campaign_id: uuid.UUID
    campaign_name: str
    requested_at: datetime
    # The run that claimed the job; a retry or re-execution that skipped
    # start_export_job claims it again before touching it.
    claimed_by_run_id: str


@dataclass(frozen=True)
class ExtractedContacts:
    spool_path: str
    run_id: str


@dataclass(frozen=True)
class RenderedCsv:
    path: str
    run_id: str
    row_count: int
    byte_count: int
    outcome_counts: dict[str, int]


@dataclass(frozen=True)
class UploadedCsv:
    s3_key: str
    run_id: str
    row_count: int
    byte_count: int
    outcome_counts: dict[str, int]


def parse_campaign_id(partition_key: str) -> uuid.UUID:
    try:
        return uuid.UUID(partition_key)
    except ValueError:
        raise permanent_failure(
            f"partition {partition_key!r} is not a campaign id (expected a UUID)"
        ) from None


def claim_export_job(context: dg.OpExecutionContext, conn, job: export_jobs.ExportJob) -> None:
    """Make this run the job's owner, or fail with the reason it may not be.

    Any run may take a pending job. A retry or re-execution (a run with a parent) may
    also take back a failed job, or a running one whose owner has finished, from a run
    of its own run group. Nobody takes a completed job: its file stays what its link
    promised.
    """
    run = context.run
    from_statuses = ["pending"]
    owner = context.instance.get_run_by_id(job.dagster_run_id) if job.dagster_run_id else None
    same_group = owner is None or (owner.root_run_id or owner.run_id) == (
        run.root_run_id or run.run_id
    )
    if run.parent_run_id is not None and same_group:
        from_statuses.append("failed")
        # Never from a sibling that is still at work (two re-executions at once).
        if owner is None or owner.is_finished:
            from_statuses.append("running")
    if export_jobs.claim_job(conn, job.id, context.run_id, from_statuses) is not None:
        return
    if job.status == "completed":
        raise permanent_failure(
            f"export job {job.id} is already completed; materialise the campaign's partition "
            "for a new export"
        )
    raise permanent_failure(
        f"export job {job.id} is {job.status} under run {job.dagster_run_id}; "
        f"run {context.run_id} may not take it over"
    )


def ensure_claimed(
    context: dg.OpExecutionContext, app_db: AppDatabase, spool: SpoolStorage, target: ExportTarget
) -> None:
    """In a retry or re-execution that did not re-run start_export_job, claim the job
    (and remove what a killed parent run left in the spool on this machine)."""
    if target.claimed_by_run_id == context.run_id or context.run_id in _CLAIMED_RUNS:
        return
    with app_db.engine.begin() as conn:
        job = export_jobs.get_job(conn, target.export_job_id)
        if job is None:
            raise permanent_failure(f"export job {target.export_job_id} does not exist")
        if job.dagster_run_id != context.run_id:
            claim_export_job(context, conn, job)
    if context.run.parent_run_id:
        spool.remove(context.run.parent_run_id)
    _CLAIMED_RUNS.add(context.run_id)


# Runs of this process that have claimed their job (one run per process in production).
_CLAIMED_RUNS: set[str] = set()


@dg.op(pool=APP_DATABASE_POOL, retry_policy=DATABASE_RETRY_POLICY)
def start_export_job(context: dg.OpExecutionContext, app_db: AppDatabase) -> ExportTarget:
    """Claim the request's job row for this run, or insert one for a UI or backfill run."""
    campaign_id = parse_campaign_id(context.partition_key)
    tagged_job_id = context.run.tags.get(EXPORT_JOB_TAG)
    export_job_id = uuid.UUID(tagged_job_id) if tagged_job_id else uuid.uuid4()
    with app_db.engine.begin() as conn:
        job = export_jobs.get_job(conn, export_job_id) if tagged_job_id else None
        # The request sensor's runs need their row; a UI or backfill run tags itself,
        # and its re-execution inherits a tag whose row may never have been written.
        if job is None and context.run.tags.get(SENSOR_NAME_TAG) == REQUESTS_SENSOR:
            raise permanent_failure(f"export job {export_job_id} does not exist")
        if job is not None and job.campaign_id != campaign_id:
            raise permanent_failure(
                f"export job {export_job_id} belongs to campaign "
                f"{job.campaign_id}, not to partition {campaign_id}"
            )
        campaign = get_campaign(conn, campaign_id)
        if campaign is None:
            raise permanent_failure(f"campaign {campaign_id} does not exist")
        if job is not None:
            claim_export_job(context, conn, job)
        else:
            if not tagged_job_id:
                # Tag first, so the failure sensor can find the row if anything below fails.
                context.instance.add_run_tags(context.run_id, {EXPORT_JOB_TAG: str(export_job_id)})
            job = export_jobs.insert_job(
                conn,
                campaign_id,
                requested_by_user_id=None,
                status="running",
                job_id=export_job_id,
                dagster_run_id=context.run_id,
            )
    context.log.info(f"export job {export_job_id} running for campaign {campaign_id}")
    return ExportTarget(export_job_id, campaign_id, campaign.name, job.created_at, context.run_id)


def _extract(context, app_db: AppDatabase, spool: SpoolStorage, target) -> ExtractedContacts:
    spool_path = spool.new_run_dir(context.run_id) / "contacts.spool.csv"
    with open(spool_path, "wb") as spool_file:
        copy_terminal_contacts(app_db.engine, target.campaign_id, spool_file)
    return ExtractedContacts(str(spool_path), context.run_id)


def _render(context, extracted: ExtractedContacts) -> RenderedCsv:
    spool_path = Path(extracted.spool_path)
    csv_path = spool_path.with_name("export.csv")
    stats = render_spool(spool_path, csv_path)
    spool_path.unlink()
    return RenderedCsv(
        path=str(csv_path),
        run_id=context.run_id,
        row_count=stats.row_count,
        byte_count=stats.byte_count,
        outcome_counts={
            state: stats.outcome_counts.get(state, 0) for state in TERMINAL_CONTACT_STATES
        },
    )


def _input_of_this_run(context, app_db, spool, target, upstream):
    """Claim the job (see ensure_claimed), then return the upstream op's output if this run
    made its file and it is still there. A retry or re-execution loads the parent run's
    outputs, whose files were on the parent's disk and are gone (removed on failure, or
    another machine): it makes them again."""
    ensure_claimed(context, app_db, spool, target)
    path = upstream.spool_path if isinstance(upstream, ExtractedContacts) else upstream.path
    if upstream.run_id == context.run_id and Path(path).exists():
        return upstream
    context.log.info(f"the files of run {upstream.run_id} are gone; extracting again")
    extracted = _extract(context, app_db, spool, target)
    return extracted if isinstance(upstream, ExtractedContacts) else _render(context, extracted)


@dg.op(
    pool=APP_DATABASE_POOL,
    retry_policy=DATABASE_RETRY_POLICY,
)
def extract_terminal_contacts(
    context: dg.OpExecutionContext, app_db: AppDatabase, spool: SpoolStorage, target: ExportTarget
) -> ExtractedContacts:
    """Stream the campaign's terminal contacts and their answers to a raw spool file."""
    ensure_claimed(context, app_db, spool, target)
    return _extract(context, app_db, spool, target)


@dg.op
def render_csv(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    spool: SpoolStorage,
    target: ExportTarget,
    extracted: ExtractedContacts,
) -> RenderedCsv:
    """Format the rows as the export CSV (quoting, timestamps, injection guard), in batches."""
    return _render(context, _input_of_this_run(context, app_db, spool, target, extracted))


def _record_key(context, app_db: AppDatabase, objects: ExportObjects, target: ExportTarget) -> str:
    """Key first: an object that exists is always findable from its job row, so a run
    that fails after the upload can have its object deleted."""
    key = objects.key(target.campaign_id, target.export_job_id)
    with app_db.engine.begin() as conn:
        if not export_jobs.record_object_key(conn, target.export_job_id, context.run_id, key):
            raise permanent_failure(
                f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
            )
    return key


def _upload(context, objects: ExportObjects, rendered: RenderedCsv, key: str) -> UploadedCsv:
    objects.upload(Path(rendered.path), key)
    return UploadedCsv(
        key, context.run_id, rendered.row_count, rendered.byte_count, rendered.outcome_counts
    )


@dg.op(retry_policy=UPLOAD_RETRY_POLICY)
def upload_csv(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    spool: SpoolStorage,
    target: ExportTarget,
    rendered: RenderedCsv,
) -> UploadedCsv:
    """Upload the file to its private, encrypted object, its key recorded on the job first."""
    rendered = _input_of_this_run(context, app_db, spool, target, rendered)
    objects = destination.objects()
    key = _record_key(context, app_db, objects, target)
    try:
        return _upload(context, objects, rendered, key)
    except Exception as error:
        attempts = context.retry_number + 1
        if attempts <= UPLOAD_RETRY_POLICY.max_retries:
            raise  # the retry policy tries again
        raise permanent_failure(
            f"upload to {objects.uri(key)} failed after {attempts} attempts: "
            f"{describe_s3_error(error)}"
        ) from error


@dg.op(pool=APP_DATABASE_POOL, retry_policy=DATABASE_RETRY_POLICY, out=dg.Out(dg.Nothing))
def record_export(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    spool: SpoolStorage,
    target: ExportTarget,
    uploaded: UploadedCsv,
) -> None:
    """Sign the download link and complete the job row; show counts, never rows, in Dagster."""
    ensure_claimed(context, app_db, spool, target)
    objects = destination.objects()
    if uploaded.run_id != context.run_id and not objects.exists(uploaded.s3_key):
        # Re-executed after a failure whose clean-up deleted the parent's file: make it again.
        context.log.info(f"the file of run {uploaded.run_id} is gone; exporting again")
        rendered = _render(context, _extract(context, app_db, spool, target))
        key = _record_key(context, app_db, objects, target)
        uploaded = _upload(context, objects, rendered, key)
    url, expires_at = objects.sign(
        uploaded.s3_key, target.campaign_name, target.requested_at.date()
    )
    with app_db.engine.begin() as conn:
        completed = export_jobs.mark_completed(
            conn,
            target.export_job_id,
            run_id=context.run_id,
            s3_key=uploaded.s3_key,
            download_url=url,
            url_expires_at=expires_at,
            total_records=uploaded.row_count,
        )
    if not completed:
        raise permanent_failure(
            f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
        )
    context.add_output_metadata(
        {
            "dagster/row_count": uploaded.row_count,
            "bytes": uploaded.byte_count,
            "s3_uri": objects.uri(uploaded.s3_key),
            "export_job_id": str(target.export_job_id),
            "url_expires_at": export_jobs.iso_utc(expires_at),
            **{f"outcome/{state}": n for state, n in uploaded.outcome_counts.items()},
        }
    )
    spool.remove(context.run_id)


@dg.graph_asset(
    partitions_def=campaigns_partitions,
    kinds={"postgres", "pandas", "s3"},
    group_name="exports",
    # One run per campaign, also in backfills: a failing campaign fails its own run and
    # export job only, and each run's memory is bounded by one campaign.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    description="A campaign's terminal contacts and survey answers as a CSV file in S3, "
    "with a time-limited download link recorded on its export_jobs row.",
)
def campaign_export():
    target = start_export_job()
    rendered = render_csv(target, extract_terminal_contacts(target))
    return record_export(target, upload_csv(target, rendered))


campaign_export_job = dg.define_asset_job(
    "campaign_export_job",
    selection=[campaign_export],
    description="Export one campaign; launched by export_requests_sensor for each pending request.",
)
