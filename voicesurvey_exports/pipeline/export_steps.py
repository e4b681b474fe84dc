"""What the export's ops do for one campaign, step by step: extract its terminal contacts to
a spool file, render the CSV file, record the object key on the job, upload, check the
stored object. assets.py's ops call these for each campaign of their run; recovery.py
calls them again when a run has to make a file that an earlier run made.

The contact rows stream from the database to a spool file, through pandas in small
batches to the CSV file, and to S3 in multipart chunks, so memory stays flat at any
campaign size. Steps hand each other file paths and counts only.
"""

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg

from ..app_db import export_jobs, export_schedules
from ..app_db.contacts import ContactFilter, copy_terminal_contacts, count_terminal_contacts
from ..app_db.schema import TERMINAL_CONTACT_STATES
from ..app_db.times import iso_utc
from ..export_file.file_formats import render_spool_as
from ..export_file.s3_object import ExportObjects
from .export_checks import evaluate, failure_reason, stored_start_bytes
from .failures import permanent_failure
from .progress import EXTRACT, RENDER, UPLOAD, ExportProgress
from .resources import AppDatabase
from .spool import SpoolStorage


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
    # A delivery of an incremental recurring export: only the contacts changed since the
    # schedule's latest completed delivery.
    schedule_id: uuid.UUID | None = None
    incremental: bool = False
    format: str = "csv"
    outcomes: tuple[str, ...] = TERMINAL_CONTACT_STATES
    attempted_from: datetime | None = None
    attempted_to: datetime | None = None
    time_zone: str = "UTC"

    @property
    def contact_filter(self) -> ContactFilter:
        return ContactFilter(self.outcomes, self.attempted_from, self.attempted_to)

    @property
    def extraction_time_zone(self) -> str:
        """The zone the spool's timestamps come in: Parquet stores instants (its column's
        tz metadata names the request's zone), the text formats write the zone's times."""
        return "UTC" if self.format == "parquet" else self.time_zone

    @property
    def options(self) -> dict:
        """The request's options, as the materialisation shows them."""
        return {
            "format": self.format,
            "compression": self.compression,
            "bom": self.bom,
            "outcomes": ",".join(self.outcomes),
            "attempted_from": iso_or_none(self.attempted_from),
            "attempted_to": iso_or_none(self.attempted_to),
            "time_zone": self.time_zone,
        }


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


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


def progress_of(context, export_job_id: uuid.UUID, total_rows=0) -> ExportProgress:
    # Every op of the export has the app_db resource.
    engine = context.resources.app_db.engine
    return ExportProgress(engine, export_job_id, context.run_id, total_rows, context.log)


def extract_contacts(
    context, app_db: AppDatabase, spool: SpoolStorage, target: ExportTarget
) -> ExtractedContacts:
    spool_path = spool.new_run_dir(context.run_id) / "contacts.spool.csv"
    changed_since, window_end = None, []
    if target.incremental:
        # Read now, not when the job was made: a delivery that completed meanwhile counts.
        with app_db.engine.connect() as conn:
            changed_since = export_schedules.delivered_through(conn, target.schedule_id)
    contact_filter = dataclasses.replace(target.contact_filter, changed_since=changed_since)

    def count_rows() -> int:
        # At the first report, beside the running COPY: an export done within a second
        # never counts, and the count cannot hold up a COPY that waits on a lock.
        with app_db.engine.connect() as conn:
            return count_terminal_contacts(conn, target.campaign_id, contact_filter)

    progress = progress_of(context, target.export_job_id, count_rows)
    with open(spool_path, "wb") as spool_file:
        database_rows = copy_terminal_contacts(
            app_db.engine,
            target.campaign_id,
            spool_file,
            on_progress=progress.extracted,
            contact_filter=contact_filter,
            time_zone=target.extraction_time_zone,
            on_window_end=window_end.append if target.incremental else None,
        )
    if target.incremental:
        with app_db.engine.begin() as conn:
            if not export_schedules.record_window(
                conn,
                target.export_job_id,
                context.run_id,
                changed_since=changed_since,
                snapshot_at=window_end[0],
            ):
                raise permanent_failure(
                    f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
                )
    progress.finished(EXTRACT)
    return ExtractedContacts(target.export_job_id, str(spool_path), context.run_id, database_rows)


def render_file(context, extracted: ExtractedContacts, target: ExportTarget) -> RenderedCsv:
    spool_path = Path(extracted.spool_path)
    csv_path = spool_path.with_name(f"export.{target.format}")
    progress = progress_of(context, extracted.export_job_id, extracted.database_rows)
    stats = render_spool_as(
        target.format,
        spool_path,
        csv_path,
        on_batch=progress.rendered,
        bom=target.bom,
        gzip=target.compression == "gzip",
        time_zone=target.time_zone,
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


def object_key(context, objects: ExportObjects, target: ExportTarget) -> str:
    """This run's own key for the job's object: a run never writes over another's."""
    return objects.key(
        target.campaign_id,
        target.export_job_id,
        target.compression,
        attempt=context.run_id,
        file_format=target.format,
    )


def record_key(context, app_db: AppDatabase, objects: ExportObjects, target: ExportTarget) -> str:
    """Key first: an object that exists is always findable from its job row, so a run
    that fails after the upload can have its object deleted."""
    key = object_key(context, objects, target)
    with app_db.engine.begin() as conn:
        if not export_jobs.record_object_key(
            conn, target.export_job_id, context.run_id, key, objects.bucket
        ):
            raise permanent_failure(
                f"export job {target.export_job_id} is no longer owned by run {context.run_id}"
            )
    return key


def upload_file(context, objects: ExportObjects, rendered: RenderedCsv, key: str) -> UploadedCsv:
    progress = progress_of(context, rendered.export_job_id)
    objects.upload(Path(rendered.path), key, sha256=rendered.sha256, on_bytes=progress.uploaded)
    progress.finished(UPLOAD)
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


def check_stored_file(
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
        uploaded.s3_key, stored_start_bytes(bom=target.bom, gzip=gzip, file_format=target.format)
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
        file_format=target.format,
    )
    checks.extend(evaluations)
    reason = failure_reason(evaluations)
    if reason:
        raise permanent_failure(reason)
