"""The campaign_export asset: a graph of small ops over the campaign partitions of a run.

extract_terminal_contacts -> render_csv -> upload_csv -> record_export

The first op claims each campaign's export_jobs row for the run, or inserts one for a UI
or backfill run, before it extracts; every later op receives the claimed targets too.

A request or a single materialisation is a run of one campaign: a failure fails the step
(retry policies, then the run, whose failure sensor fails the job). A backfill run
exports up to CAMPAIGNS_PER_BACKFILL_RUN campaigns one after another, so a backfill does
not pay a run worker's start-up per campaign: there each campaign retries on its own, a
campaign that still fails ends its own export job failed with its reason and drops out,
the others complete and are materialised partition by partition, and the run then fails
naming the failed campaigns (see campaign_batch.py).

What each op does for a campaign is in export_steps.py; what a retry, a re-execution or
a takeover of a job does besides (claim the job, make a parent's files again, replace or
delete other runs' objects) is in recovery.py. The spool folder is private to the run and
removed when it ends; Dagster's storage and UI see counts and locations, never contact
data.
"""

import uuid

import dagster as dg

from ..app_db import export_jobs, export_schedules
from ..app_db.campaigns import get_campaign
from ..app_db.job_status import JobStatus
from ..app_db.times import iso_utc
from ..export_file.s3_object import describe_s3_error
from . import recovery
from .campaign_batch import CampaignBatch
from .export_checks import ASSET_KEY, CHECK_SPECS
from .export_steps import (
    ExportTarget,
    ExtractedContacts,
    RenderedCsv,
    UploadedCsv,
    check_stored_file,
    extract_contacts,
    parse_campaign_id,
    render_file,
)
from .failures import ExportCancelled, permanent_failure
from .metadata import COLUMN_SCHEMA, partition_metadata
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
# Campaigns per backfill run: a run worker's start-up (about 2 s and 2.5 CPU-s here) is
# paid once for these many small exports.
CAMPAIGNS_PER_BACKFILL_RUN = 20

UPLOAD_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
DATABASE_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


def _start(
    context: dg.OpExecutionContext, app_db: AppDatabase, partition_key: str, in_batch: bool
) -> ExportTarget:
    campaign_id = parse_campaign_id(partition_key)
    if in_batch:
        export_job_id, known_id = recovery.batch_job_id(context.run, campaign_id), True
    else:
        # Read the run's tags afresh: a retry of this op must see the tag that its first
        # attempt added, or it would insert a second job row and leave the first running.
        run = context.instance.get_run_by_id(context.run_id) or context.run
        tagged_job_id = run.tags.get(EXPORT_JOB_TAG)
        export_job_id = uuid.UUID(tagged_job_id) if tagged_job_id else uuid.uuid4()
        known_id = bool(tagged_job_id)
    with app_db.engine.begin() as conn:
        job = export_jobs.get_job(conn, export_job_id) if known_id else None
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
        schedule = export_schedules.schedule_of_job(conn, job) if job is not None else None
        if job is not None:
            # (Unless this run claimed it already: a retry of this op.)
            if (job.status, job.dagster_run_id) != (JobStatus.RUNNING, context.run_id):
                recovery.claim_export_job(context, conn, job)
            # A value written by SQL that this release does not know fails the job now
            # (claimed: the failure sensor ends it), not after retrying an upload.
            unknown = export_jobs.unknown_option(job)
            if unknown:
                raise permanent_failure(f"export job {export_job_id}: {unknown}")
        else:
            if not known_id:
                # Tag first, so the failure sensor can find the row if anything below fails.
                # (A backfill run of several campaigns has no tag: the sensor finds its
                # rows by their owning run.)
                context.instance.add_run_tags(context.run_id, {EXPORT_JOB_TAG: str(export_job_id)})
            job = export_jobs.insert_job(
                conn,
                campaign_id,
                requested_by_user_id=None,
                status=JobStatus.RUNNING,
                job_id=export_job_id,
                dagster_run_id=context.run_id,
            )
    return ExportTarget(
        export_job_id,
        campaign_id,
        campaign.name,
        job.created_at,
        context.run_id,
        partition_key,
        bom=job.bom,
        compression=job.compression,
        format=job.format,
        outcomes=job.outcome_states,
        attempted_from=job.attempted_from,
        attempted_to=job.attempted_to,
        time_zone=job.time_zone,
        schedule_id=job.schedule_id,
        incremental=schedule is not None and schedule.incremental,
    )


def _with_upstream(
    targets: list[ExportTarget], upstream: list, keep_missing: bool = False
) -> list[tuple]:
    """Pair each campaign with its upstream result; campaigns that failed earlier in a
    backfill run have none and are left out (or paired with None: keep_missing)."""
    by_job = {item.export_job_id: item for item in upstream}
    return [
        ((target, by_job.get(target.export_job_id)), (target.export_job_id, target.campaign_id))
        for target in targets
        if keep_missing or target.export_job_id in by_job
    ]


@dg.op(
    pool=APP_DATABASE_POOL,
    retry_policy=DATABASE_RETRY_POLICY,
    out={"targets": dg.Out(list[ExportTarget]), "extracted": dg.Out(list[ExtractedContacts])},
)
def extract_terminal_contacts(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    spool: SpoolStorage,
):
    """Claim each campaign's request row for this run (or insert one for a UI or backfill
    run), then stream its terminal contacts and their answers to a raw spool file."""
    if context.run.parent_run_id:
        # A retry or re-execution: the parent run is finished; drop what it left here.
        spool.remove(context.run.parent_run_id)
    batch = CampaignBatch(context, app_db, destination)
    keys = context.partition_keys  # a run of this asset always has one or a range
    if batch.isolated:  # a key that is not a campaign id fails only its own campaign
        items = [(key, recovery.batch_job_ref(context.run, key)) for key in keys]
    else:
        items = [(key, (None, None)) for key in keys]

    def start_and_extract(key: str, _attempt: int) -> tuple[ExportTarget, ExtractedContacts]:
        target = _start(context, app_db, key, batch.isolated)
        return target, extract_contacts(context, app_db, spool, target)

    started = batch.each(items, start_and_extract, DATABASE_RETRY_POLICY)
    return [target for target, _ in started], [extracted for _, extracted in started]


@dg.op
def render_csv(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    spool: SpoolStorage,
    targets: list[ExportTarget],
    extracted: list[ExtractedContacts],
) -> list[RenderedCsv]:
    """Format the rows as the export CSV (quoting, timestamps, injection guard), in batches."""
    return CampaignBatch(context, app_db, destination).each(
        _with_upstream(targets, extracted),
        lambda pair, _attempt: render_file(
            context, recovery.input_of_this_run(context, app_db, spool, *pair), pair[0]
        ),
    )


@dg.op(
    retry_policy=UPLOAD_RETRY_POLICY,
    out={
        "uploaded": dg.Out(list[UploadedCsv]),
        # The asset's checks (evaluated here, recorded per partition); no value.
        **{
            spec.get_python_identifier(): dg.Out(dg.Nothing, is_required=False)
            for spec in CHECK_SPECS
        },
    },
)
def upload_csv(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    spool: SpoolStorage,
    targets: list[ExportTarget],
    rendered: list[RenderedCsv],
):
    """Upload each file to its private, encrypted object, its key recorded on the job
    first, then check the stored object against what was extracted and written."""
    objects = destination.objects()
    batch = CampaignBatch(context, app_db, destination)
    checks: list[dg.AssetCheckEvaluation] = []

    def upload(pair: tuple[ExportTarget, RenderedCsv], attempt: int) -> UploadedCsv:
        target, csv_file = pair
        csv_file = recovery.input_of_this_run(context, app_db, spool, target, csv_file)
        key = recovery.record_own_key(context, app_db, objects, target)
        try:
            uploaded = recovery.upload_own_object(context, app_db, objects, csv_file, key)
        except ExportCancelled:
            raise  # not an upload failure: its user cancelled it (campaign_batch ends it)
        except Exception as error:
            if attempt < UPLOAD_RETRY_POLICY.max_retries:
                raise  # the retry policy tries again
            raise permanent_failure(
                f"upload to {objects.uri(key)} failed after {attempt + 1} attempts: "
                f"{describe_s3_error(error)}"
            ) from error
        check_stored_file(objects, target, csv_file, uploaded, checks, not batch.isolated)
        return uploaded

    try:
        uploaded = batch.each(_with_upstream(targets, rendered), upload, UPLOAD_RETRY_POLICY)
    except Exception:
        yield from checks  # a failed check shows on its partition too
        raise
    yield from checks
    yield dg.Output(uploaded, "uploaded")


def _metadata(target: ExportTarget, uploaded: UploadedCsv, objects, expires_at) -> dict:
    return partition_metadata(
        campaign_name=target.campaign_name,
        uri=objects.uri(uploaded.s3_key),
        row_count=uploaded.row_count,
        byte_count=uploaded.byte_count,
        outcome_counts=uploaded.outcome_counts,
        export_job_id=str(target.export_job_id),
        url_expires_at=iso_utc(expires_at),
        options=target.options,
    )


def _complete(
    context, app_db, destination, spool, target, uploaded, in_batch: bool, checks: list
) -> dict:
    """Sign the link and complete the job row; return the partition's metadata. A file
    made again here is checked as upload_csv checks it (evaluations added to `checks`)."""
    objects = destination.objects()
    done = recovery.completed_by_its_group(context, app_db, target, uploaded, in_batch)
    if done is not None:  # materialised again, as it is
        return _metadata(target, uploaded, objects.in_bucket(done.s3_bucket), done.url_expires_at)
    uploaded = recovery.file_to_complete(
        context, app_db, objects, spool, target, uploaded, not in_batch, checks
    )
    objects = objects.in_bucket(uploaded.bucket)  # a parent run's upload: its bucket
    url, expires_at = objects.sign(
        uploaded.s3_key, target.campaign_name, target.requested_at.date()
    )
    with app_db.engine.begin() as conn:
        completed = export_jobs.mark_completed(
            conn,
            target.export_job_id,
            run_id=context.run_id,
            s3_key=uploaded.s3_key,
            s3_bucket=objects.bucket,
            download_url=url,
            url_expires_at=expires_at,
            total_records=uploaded.row_count,
            size_bytes=uploaded.byte_count,
            sha256=uploaded.sha256,
        )
    if not completed:
        with app_db.engine.connect() as conn:
            job = export_jobs.get_job(conn, target.export_job_id)
        if job is not None and job.cancel_requested_at is not None:
            # Asked to cancel while the file was being written: it is deleted, not linked.
            raise ExportCancelled(f"export job {target.export_job_id} was cancelled")
        recovery.delete_unless_the_jobs(app_db, objects, target.export_job_id, uploaded.s3_key)
        raise permanent_failure(
            f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
        )
    return _metadata(target, uploaded, objects, expires_at)


@dg.op(
    pool=APP_DATABASE_POOL,
    retry_policy=DATABASE_RETRY_POLICY,
    # Not produced by a backfill run of several campaigns: it materialises each campaign
    # that completed on its own (a range output would mark failed campaigns too).
    out=dg.Out(dg.Nothing, is_required=False),
)
def record_export(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    destination: ExportDestination,
    spool: SpoolStorage,
    targets: list[ExportTarget],
    uploaded: list[UploadedCsv],
):
    """Sign the download links and complete the job rows; show counts, never rows, in Dagster."""
    batch = CampaignBatch(context, app_db, destination)
    # A re-executed backfill run also retries the campaigns that failed before.
    retry_failed = batch.isolated and context.run.parent_run_id is not None
    metadata_of_run, completed = None, set()
    checks: list[dg.AssetCheckEvaluation] = []  # of files made again here
    for item in _with_upstream(targets, uploaded, keep_missing=retry_failed):
        try:
            done = batch.each(
                [item],
                lambda pair, _attempt: (
                    pair[0],
                    _complete(context, app_db, destination, spool, *pair, batch.isolated, checks),
                ),
                DATABASE_RETRY_POLICY,
            )
        except Exception:
            yield from checks
            raise
        yield from checks
        checks.clear()
        for target, metadata in done:
            if batch.isolated:
                # At once, so that a run killed later still shows this campaign as done.
                yield dg.AssetMaterialization(
                    asset_key=ASSET_KEY, partition=target.partition_key, metadata=metadata
                )
                completed.add(target.partition_key)
            else:
                metadata_of_run = metadata
    spool.remove(context.run_id)
    if not batch.isolated:
        yield dg.Output(None, metadata=metadata_of_run)
        return
    unfinished = [key for key in batch.partition_keys if key not in completed]
    batch.raise_if_any_failed(completed, _cancelled_by_users(context, app_db, unfinished))


def _cancelled_by_users(context, app_db: AppDatabase, partition_keys: list[str]) -> set[str]:
    """Those of a backfill run's campaigns whose export job its user cancelled (in any op
    of this run, or of the run it re-executes)."""
    refs = {key: recovery.batch_job_ref(context.run, key)[0] for key in partition_keys}
    with app_db.engine.connect() as conn:
        jobs = {job_id: export_jobs.get_job(conn, job_id) for job_id in refs.values() if job_id}
    return {
        key
        for key, job_id in refs.items()
        if job_id and jobs[job_id] is not None and jobs[job_id].status == JobStatus.CANCELLED
    }


@dg.graph_asset(
    partitions_def=campaigns_partitions,
    kinds={"postgres", "pandas", "s3"},
    group_name="exports",
    # Backfills export CAMPAIGNS_PER_BACKFILL_RUN campaigns per run, one after the
    # other (memory stays that of one campaign); a failing campaign fails its own export
    # job and is not materialised, the others complete.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=CAMPAIGNS_PER_BACKFILL_RUN),
    description="A campaign's terminal contacts and survey answers as a CSV file in S3, "
    "with a time-limited download link recorded on its export_jobs row. A partition is a "
    "campaign's id (campaigns.id in the app database, where a name finds its id; the "
    "Partitions tab searches ids); each partition's materialisation shows the campaign's "
    "name under `campaign`.",
    metadata={"dagster/column_schema": COLUMN_SCHEMA},
    check_specs=CHECK_SPECS,
)
def campaign_export():
    targets, extracted = extract_terminal_contacts()
    rendered = render_csv(targets, extracted)
    uploaded, *checks = upload_csv(targets, rendered)
    return {
        "result": record_export(targets, uploaded),
        **{
            spec.get_python_identifier(): check
            for spec, check in zip(CHECK_SPECS, checks, strict=True)
        },
    }


campaign_export_job = dg.define_asset_job(
    "campaign_export_job",
    selection=[campaign_export],
    description="Export campaigns; export_requests_sensor launches one run per pending request.",
)
