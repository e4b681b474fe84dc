"""The campaign_export asset: a graph of small ops, one campaign partition per run.

start_export_job -> extract_terminal_contacts -> render_csv -> upload_csv -> record_export

The contact rows stream from the database to a spool file, through pandas in small
batches to the CSV file, and to S3 in multipart chunks, so memory stays flat at any
campaign size. Ops hand each other file paths and counts only; the spool folder is
private to the run and removed when it ends. Dagster's storage and UI see counts and
locations, never contact data.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from ..app_db import export_jobs
from ..app_db.campaigns import get_campaign
from ..app_db.contacts import copy_terminal_contacts
from ..app_db.schema import TERMINAL_CONTACT_STATES
from ..partitions import campaigns_partitions
from ..storage import (
    describe_s3_error,
    download_filename,
    object_key,
    presigned_download_url,
    s3_uri,
    upload_csv_file,
)
from .csv_format import render_spool
from .failures import permanent_failure
from .resources import AppDatabase, ExportDestination
from .spool import SpoolStorage, remove_spool_on_failure

# Run tag linking a run to its export_jobs row (set by the sensor, or by the run itself).
EXPORT_JOB_TAG = "export_job_id"
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


@dataclass(frozen=True)
class ExtractedContacts:
    spool_path: str


@dataclass(frozen=True)
class RenderedCsv:
    path: str
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


@dg.op(pool=APP_DATABASE_POOL, retry_policy=DATABASE_RETRY_POLICY)
def start_export_job(context: dg.OpExecutionContext, app_db: AppDatabase) -> ExportTarget:
    """Mark the request's job row running, or insert one for a UI or backfill run."""
    campaign_id = parse_campaign_id(context.partition_key)
    tagged_job_id = context.run.tags.get(EXPORT_JOB_TAG)
    with app_db.engine.begin() as conn:
        if tagged_job_id:
            export_job_id = uuid.UUID(tagged_job_id)
            job = export_jobs.get_job(conn, export_job_id)
            if job is None:
                raise permanent_failure(f"export job {export_job_id} does not exist")
            if job.campaign_id != campaign_id:
                raise permanent_failure(
                    f"export job {export_job_id} belongs to campaign "
                    f"{job.campaign_id}, not to partition {campaign_id}"
                )
        campaign = get_campaign(conn, campaign_id)
        if campaign is None:
            raise permanent_failure(f"campaign {campaign_id} does not exist")
        if tagged_job_id:
            export_jobs.mark_running(conn, export_job_id)
        else:
            # Tag first, so the failure sensor can find the row if anything below fails.
            export_job_id = uuid.uuid4()
            context.instance.add_run_tags(context.run_id, {EXPORT_JOB_TAG: str(export_job_id)})
            job = export_jobs.insert_job(
                conn, campaign_id, requested_by_user_id=None, status="running", job_id=export_job_id
            )
    context.log.info(f"export job {export_job_id} running for campaign {campaign_id}")
    return ExportTarget(export_job_id, campaign_id, campaign.name, job.created_at)


@dg.op(pool=APP_DATABASE_POOL, retry_policy=DATABASE_RETRY_POLICY)
def extract_terminal_contacts(
    context: dg.OpExecutionContext, app_db: AppDatabase, spool: SpoolStorage, target: ExportTarget
) -> ExtractedContacts:
    """Stream the campaign's terminal contacts and their answers to a raw spool file."""
    spool_path = spool.run_dir(context.run_id) / "contacts.spool.csv"
    with open(spool_path, "wb") as spool_file:
        copy_terminal_contacts(app_db.engine, target.campaign_id, spool_file)
    context.log.info(f"extracted {spool_path.stat().st_size} bytes of terminal contacts")
    return ExtractedContacts(str(spool_path))


@dg.op
def render_csv(context: dg.OpExecutionContext, extracted: ExtractedContacts) -> RenderedCsv:
    """Format the rows as the export CSV (quoting, timestamps, injection guard), in batches."""
    spool_path = Path(extracted.spool_path)
    csv_path = spool_path.with_name("export.csv")
    stats = render_spool(spool_path, csv_path)
    spool_path.unlink()
    context.log.info(f"rendered {stats.row_count} rows, {stats.byte_count} bytes")
    return RenderedCsv(
        path=str(csv_path),
        row_count=stats.row_count,
        byte_count=stats.byte_count,
        outcome_counts={
            state: stats.outcome_counts.get(state, 0) for state in TERMINAL_CONTACT_STATES
        },
    )


@dg.op(retry_policy=UPLOAD_RETRY_POLICY)
def upload_csv(
    context: dg.OpExecutionContext,
    s3: S3Resource,
    destination: ExportDestination,
    target: ExportTarget,
    rendered: RenderedCsv,
) -> str:
    """Upload the file to its private, encrypted object; return the object key."""
    key = object_key(destination.prefix, target.campaign_id, target.export_job_id)
    try:
        upload_csv_file(
            s3.get_client(), Path(rendered.path), destination.bucket, key, destination.kms_key_id
        )
    except Exception as error:
        attempts = context.retry_number + 1
        if attempts <= UPLOAD_RETRY_POLICY.max_retries:
            raise  # the retry policy tries again
        raise permanent_failure(
            f"upload to {s3_uri(destination.bucket, key)} failed after {attempts} attempts: "
            f"{describe_s3_error(error)}"
        ) from error
    return key


@dg.op(pool=APP_DATABASE_POOL, retry_policy=DATABASE_RETRY_POLICY, out=dg.Out(dg.Nothing))
def record_export(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    s3: S3Resource,
    destination: ExportDestination,
    target: ExportTarget,
    spool: SpoolStorage,
    rendered: RenderedCsv,
    s3_key: str,
) -> None:
    """Sign the download link and complete the job row; show counts, never rows, in Dagster."""
    url, expires_at = presigned_download_url(
        s3.get_client(),
        destination.bucket,
        s3_key,
        destination.url_ttl_seconds,
        download_filename(target.campaign_name, target.requested_at.date()),
    )
    with app_db.engine.begin() as conn:
        export_jobs.mark_completed(
            conn,
            target.export_job_id,
            s3_key=s3_key,
            download_url=url,
            url_expires_at=expires_at,
            total_records=rendered.row_count,
        )
    context.add_output_metadata(
        {
            "dagster/row_count": rendered.row_count,
            "bytes": rendered.byte_count,
            "s3_uri": s3_uri(destination.bucket, s3_key),
            "export_job_id": str(target.export_job_id),
            "url_expires_at": export_jobs.iso_utc(expires_at),
            **{f"outcome/{state}": n for state, n in rendered.outcome_counts.items()},
        }
    )
    spool.remove(context.run_id)


@dg.graph_asset(
    partitions_def=campaigns_partitions,
    kinds={"postgres", "pandas", "s3"},
    group_name="exports",
    hooks={remove_spool_on_failure},
    # One run per campaign, also in backfills: a failing campaign fails its own run and
    # export job only, and each run's memory is bounded by one campaign.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    description="A campaign's terminal contacts and survey answers as a CSV file in S3, "
    "with a time-limited download link recorded on its export_jobs row.",
)
def campaign_export():
    target = start_export_job()
    rendered = render_csv(extract_terminal_contacts(target))
    return record_export(target, rendered, upload_csv(target, rendered))


campaign_export_job = dg.define_asset_job(
    "campaign_export_job",
    selection=[campaign_export],
    description="Export one campaign; launched by export_requests_sensor for each pending request.",
)
