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
from ..app_db.contacts import copy_terminal_contacts, count_terminal_contacts
from ..app_db.job_status import JobStatus
from ..app_db.schema import TERMINAL_CONTACT_STATES
from ..app_db.times import iso_utc
from ..export_file.csv_format import render_spool
from ..export_file.s3_object import ExportObjects, describe_s3_error
from .campaign_batch import CampaignBatch
from .export_checks import ASSET_KEY, CHECK_SPECS, evaluate, failure_reason, stored_start_bytes
from .failures import ExportCancelled, permanent_failure
from .metadata import COLUMN_SCHEMA, partition_metadata
from .partitions import campaigns_partitions
from .progress import EXTRACT, RENDER, UPLOAD, ExportProgress
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


@dataclass(frozen=True)
class ExportTarget:
    export_job_id: uuid.UUID
    campaign_id: uuid.UUID
    campaign_name: str
    requested_at: datetime
    # The run that claimed the job; a retry or re-execution that skipped
    # extract_terminal_contacts claims it again before touching it.
    claimed_by_run_id: str
    # The campaign's partition key, as Dagster spells it.
    partition_key: str
    # The request's file options, from its job row (a UI or backfill run's: the defaults).
    bom: bool = False
    compression: str = "none"


@dataclass(frozen=True)
class ExtractedContacts:
    export_job_id: uuid.UUID
    spool_path: str
    run_id: str
    database_rows: int  # as the database counted them (the row-count check)


@dataclass(frozen=True)
class RenderedCsv:
    export_job_id: uuid.UUID
    path: str
    run_id: str
    row_count: int
    byte_count: int
    outcome_counts: dict[str, int]
    database_rows: int
    sha256: str


@dataclass(frozen=True)
class UploadedCsv:
    export_job_id: uuid.UUID
    s3_key: str
    run_id: str
    row_count: int
    byte_count: int
    outcome_counts: dict[str, int]
    sha256: str
    # Where it was uploaded (None from a run made before the bucket was recorded: the
    # configured one); a re-execution signs it there even if S3_BUCKET_NAME has changed.
    bucket: str | None = None


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

# Export job ids of backfill runs: one per run group and campaign, so that a retry or
# re-execution of a backfill run finds (and claims) the rows its parent inserted.
BATCH_JOB_NAMESPACE = uuid.UUID("8d4f3c52-6a0e-4d8e-9c57-2f1a4c7b9e10")


def batch_job_id(run: dg.DagsterRun, campaign_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(BATCH_JOB_NAMESPACE, f"{run.root_run_id or run.run_id}/{campaign_id}")


def _batch_job_ref(run: dg.DagsterRun, partition_key: str) -> tuple:
    try:
        campaign_id = uuid.UUID(partition_key)
    except ValueError:
        return None, partition_key
    return batch_job_id(run, campaign_id), campaign_id


def _start(
    context: dg.OpExecutionContext, app_db: AppDatabase, partition_key: str, in_batch: bool
) -> ExportTarget:
    campaign_id = parse_campaign_id(partition_key)
    if in_batch:
        export_job_id, known_id = batch_job_id(context.run, campaign_id), True
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
        if job is not None:
            # (Unless this run claimed it already: a retry of this op.)
            if (job.status, job.dagster_run_id) != (JobStatus.RUNNING, context.run_id):
                claim_export_job(context, conn, job)
            # A value written by SQL that this release does not know fails the job now
            # (claimed: the failure sensor ends it), not after retrying an upload.
            unknown = export_jobs.unknown_option(job.compression)
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
    )


def _progress(context, export_job_id: uuid.UUID, total_rows=0) -> ExportProgress:
    # Every op of the export has the app_db resource.
    engine = context.resources.app_db.engine
    return ExportProgress(engine, export_job_id, context.run_id, total_rows, context.log)


def _extract(context, app_db: AppDatabase, spool: SpoolStorage, target) -> ExtractedContacts:
    spool_path = spool.new_run_dir(context.run_id) / "contacts.spool.csv"

    def count_rows() -> int:
        # At the first report, beside the running COPY: an export done within a second
        # never counts, and the count cannot hold up a COPY that waits on a lock.
        with app_db.engine.connect() as conn:
            return count_terminal_contacts(conn, target.campaign_id)

    progress = _progress(context, target.export_job_id, count_rows)
    with open(spool_path, "wb") as spool_file:
        database_rows = copy_terminal_contacts(
            app_db.engine, target.campaign_id, spool_file, on_progress=progress.extracted
        )
    progress.finished(EXTRACT)
    return ExtractedContacts(target.export_job_id, str(spool_path), context.run_id, database_rows)


def _render(context, extracted: ExtractedContacts, target: ExportTarget) -> RenderedCsv:
    spool_path = Path(extracted.spool_path)
    csv_path = spool_path.with_name("export.csv")
    progress = _progress(context, extracted.export_job_id, extracted.database_rows)
    stats = render_spool(
        spool_path,
        csv_path,
        on_batch=progress.rendered,
        bom=target.bom,
        gzip=target.compression == "gzip",
    )
    progress.finished(RENDER)
    spool_path.unlink()
    return RenderedCsv(
        export_job_id=extracted.export_job_id,
        path=str(csv_path),
        run_id=context.run_id,
        row_count=stats.row_count,
        byte_count=stats.byte_count,
        outcome_counts={
            state: stats.outcome_counts.get(state, 0) for state in TERMINAL_CONTACT_STATES
        },
        database_rows=extracted.database_rows,
        sha256=stats.sha256,
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
    if isinstance(upstream, ExtractedContacts):
        return extracted
    return _render(context, extracted, target)


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
        items = [(key, _batch_job_ref(context.run, key)) for key in keys]
    else:
        items = [(key, (None, None)) for key in keys]

    def start_and_extract(key: str, _attempt: int) -> tuple[ExportTarget, ExtractedContacts]:
        target = _start(context, app_db, key, batch.isolated)
        return target, _extract(context, app_db, spool, target)

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
        lambda pair, _attempt: _render(
            context, _input_of_this_run(context, app_db, spool, *pair), pair[0]
        ),
    )


def _record_key(context, app_db: AppDatabase, objects: ExportObjects, target: ExportTarget) -> str:
    """Key first: an object that exists is always findable from its job row, so a run
    that fails after the upload can have its object deleted. The key is this run's own
    (ExportObjects.key): an earlier run's object that the row still names (this run took
    the job over) is deleted first, as this run's file replaces it."""
    key = objects.key(
        target.campaign_id, target.export_job_id, target.compression, attempt=context.run_id
    )
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, target.export_job_id)
    if job is not None and job.dagster_run_id == context.run_id and job.s3_key not in (None, key):
        earlier = objects.in_bucket(job.s3_bucket)
        try:
            earlier.delete(job.s3_key)
        except Exception as error:
            # Not this export's concern (e.g. the earlier run's bucket is gone): the
            # bucket's lifecycle rule expires what is left.
            context.log.warning(
                f"could not delete {earlier.uri(job.s3_key)}, the object of an earlier run "
                f"of export job {job.id}: {describe_s3_error(error)}"
            )
    with app_db.engine.begin() as conn:
        if not export_jobs.record_object_key(
            conn, target.export_job_id, context.run_id, key, objects.bucket
        ):
            raise permanent_failure(
                f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
            )
    return key


def _delete_unless_the_jobs(app_db, objects: ExportObjects, export_job_id, key: str) -> None:
    """Delete this run's object unless its job names it: once another run took the job
    over (run monitoring failed this run while its worker lived on, and a retry runs), or
    the job ended without it, nobody would find it. The winner's object is another key."""
    with app_db.engine.connect() as conn:
        job = export_jobs.get_job(conn, export_job_id)
    if job is None or job.s3_key != key:
        objects.delete(key)


def _upload(context, objects: ExportObjects, rendered: RenderedCsv, key: str) -> UploadedCsv:
    progress = _progress(context, rendered.export_job_id)
    try:
        objects.upload(Path(rendered.path), key, sha256=rendered.sha256, on_bytes=progress.uploaded)
        progress.finished(UPLOAD)
    except ExportCancelled:
        # Cancelled, or another run took the job over while this one uploaded.
        _delete_unless_the_jobs(context.resources.app_db, objects, rendered.export_job_id, key)
        raise
    # Contact data off the disk at once (a backfill run holds many campaigns); a later
    # step that needs the rows again exports them again.
    Path(rendered.path).unlink(missing_ok=True)
    return UploadedCsv(
        rendered.export_job_id,
        key,
        context.run_id,
        rendered.row_count,
        rendered.byte_count,
        rendered.outcome_counts,
        rendered.sha256,
        objects.bucket,
    )


def _check_stored_file(
    objects: ExportObjects,
    target: ExportTarget,
    rendered: RenderedCsv,
    uploaded: UploadedCsv,
    checks: list[dg.AssetCheckEvaluation],
    blocking: bool,
) -> None:
    """Run the file's checks (export_checks) and add their evaluations to `checks`; a
    failing one fails this campaign with its reason, never retried."""
    gzip = target.compression == "gzip"
    stored_bytes, stored_start = objects.stored(
        uploaded.s3_key, stored_start_bytes(bom=target.bom, gzip=gzip)
    )
    evaluations = evaluate(
        partition_key=target.partition_key,
        database_rows=rendered.database_rows,
        file_rows=rendered.row_count,
        written_bytes=rendered.byte_count,
        stored_bytes=stored_bytes,
        stored_start=stored_start,
        blocking=blocking,
        bom=target.bom,
        gzip=gzip,
    )
    checks.extend(evaluations)
    reason = failure_reason(evaluations)
    if reason:
        raise permanent_failure(reason)


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
        csv_file = _input_of_this_run(context, app_db, spool, target, csv_file)
        key = _record_key(context, app_db, objects, target)
        try:
            uploaded = _upload(context, objects, csv_file, key)
        except ExportCancelled:
            raise  # not an upload failure: its user cancelled it (campaign_batch ends it)
        except Exception as error:
            if attempt < UPLOAD_RETRY_POLICY.max_retries:
                raise  # the retry policy tries again
            raise permanent_failure(
                f"upload to {objects.uri(key)} failed after {attempt + 1} attempts: "
                f"{describe_s3_error(error)}"
            ) from error
        _check_stored_file(objects, target, csv_file, uploaded, checks, not batch.isolated)
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
        bom=target.bom,
        compression=target.compression,
    )


def _complete(
    context, app_db, destination, spool, target, uploaded, in_batch: bool, checks: list
) -> dict:
    """Sign the link and complete the job row; return the partition's metadata. A file
    made again here is checked as upload_csv checks it (evaluations added to `checks`)."""
    objects = destination.objects()
    if in_batch and context.run.parent_run_id and uploaded is not None:
        # Re-executing a backfill run: a campaign an earlier run of the group completed
        # (batch job ids are the group's own) is done; it is materialised again.
        with app_db.engine.connect() as conn:
            job = export_jobs.get_job(conn, target.export_job_id)
        if job is not None and job.status == JobStatus.COMPLETED:
            return _metadata(target, uploaded, objects.in_bucket(job.s3_bucket), job.url_expires_at)
    ensure_claimed(context, app_db, spool, target)
    if uploaded is None:
        # Re-executing a backfill run: a campaign that failed in the run re-executed.
        context.log.info(f"campaign {target.campaign_id} failed before; exporting again")
        rendered = _render(context, _extract(context, app_db, spool, target), target)
        uploaded = _upload(
            context, objects, rendered, _record_key(context, app_db, objects, target)
        )
        _check_stored_file(objects, target, rendered, uploaded, checks, not in_batch)
    elif uploaded.run_id != context.run_id and not _still_the_jobs_file(app_db, objects, uploaded):
        # Re-executed after a failure whose clean-up deleted (or is deleting) the parent's
        # file: make it again.
        context.log.info(f"the file of run {uploaded.run_id} is gone; exporting again")
        rendered = _render(context, _extract(context, app_db, spool, target), target)
        key = _record_key(context, app_db, objects, target)
        uploaded = _upload(context, objects, rendered, key)
        _check_stored_file(objects, target, rendered, uploaded, checks, not in_batch)
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
        _delete_unless_the_jobs(app_db, objects, target.export_job_id, uploaded.s3_key)
        raise permanent_failure(
            f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
        )
    return _metadata(target, uploaded, objects, expires_at)


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
    refs = {key: _batch_job_ref(context.run, key)[0] for key in partition_keys}
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
