"""The app-side export API: the seed's four operations and cancel, with their access checks.

The app's endpoints call these; the CLI does too. They only read and write
export_jobs rows (and re-sign links): the Dagster pipeline does the exporting.
A rejected call writes nothing, except that a refresh which finds the file gone
from S3 records that on the job.

Access: viewers and unknown users may not use exports. Under the access policy
"role" (the default) campaign managers and admins see every campaign's exports;
under "owner" a campaign manager sees only those of campaigns they created, and
anything else answers exactly as a campaign or job that does not exist.

Errors never carry a signed link or SQL parameters: database errors become
AppDatabaseError (one line), S3 errors StorageUnavailable (one line, no URLs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from ..app_db import export_jobs, request_rate
from ..app_db.campaigns import Campaign, get_campaign, get_user_role
from ..app_db.engine import get_engine
from ..app_db.errors import safe_database_errors
from ..app_db.export_jobs import ExportJob
from ..app_db.job_status import JobStatus
from ..app_db.schema import (
    COMPRESSIONS,
    CONTACT_STATES,
    EXPORT_ROLES,
    FORMATS,
    FORMATS_WITH_ENVELOPE,
    IDEMPOTENCY_KEY_LENGTH,
    TERMINAL_CONTACT_STATES,
    campaigns,
)
from ..app_db.times import as_utc, is_known_time_zone, utcnow
from ..export_file.s3_object import BucketUnreachable, ExportObjects
from ..settings import ACCESS_POLICIES, DEFAULTS, Settings

FILE_MISSING_MESSAGE = "the file no longer exists in S3; request a new export"
# A new export's first poll: the sensor's next tick (about a second) and a small export's
# run, plus a few seconds for each export requested before it that has not ended; capped,
# so that a long queue never makes a client wait minutes before it looks again.
FIRST_POLL_SECONDS, SECONDS_PER_EXPORT_AHEAD, MAX_FIRST_POLL_SECONDS = 2, 3, 60
# How long an Idempotency-Key stands for its first request (as Stripe keeps them).
IDEMPOTENCY_WINDOW = timedelta(hours=24)


class ExportRequestError(Exception):
    """A request that cannot be served; the message is one line for a person."""


class InvalidRequest(ExportRequestError):
    pass


class PermissionDenied(ExportRequestError):
    pass


class NotFound(ExportRequestError):
    pass


class NotCancellable(InvalidRequest):
    """The export has ended already (completed, failed or cancelled)."""


class NotCompleted(InvalidRequest):
    """The export has no download link to refresh: it is not completed."""


class IdempotencyKeyReused(InvalidRequest):
    """The Idempotency-Key was used by the same user for a request with other options."""


class FileGone(InvalidRequest):
    """The completed export's file is no longer in S3 (deleted, or replaced meanwhile)."""


class RateLimited(ExportRequestError):
    """The user started EXPORT_REQUESTS_PER_MINUTE exports in the last minute: the next
    one is accepted after ``retry_after_seconds``."""

    def __init__(self, message: str, retry_after_seconds: int):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class StorageUnavailable(ExportRequestError):
    """S3 could not be asked (no credentials, unreachable, refused): try again later."""


def describe_storage_error(error: Exception) -> str:
    """One line naming the cause, without any URL's query string (a signature may be there)."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        text = f"{details.get('Code', 'error')}: {details.get('Message') or 'no message'}"
    else:
        text = f"{type(error).__name__}: {error}"
    text = re.sub(r"(https?://[^\s?\"']*)\?[^\s\"']*", r"\1", text)
    return " ".join(text.split())[:300]


def parse_uuid(value: str | uuid.UUID, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidRequest(f"{what} {value!r} is not a valid UUID") from None


def check_idempotency_key(key: object) -> None:
    """An Idempotency-Key: 1-255 printable ASCII characters, as Stripe takes them."""
    if not (
        isinstance(key, str)
        and 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH
        and all(" " <= char <= "~" for char in key)
    ):
        raise InvalidRequest(
            f"Idempotency-Key {str(key)[:300]!r} must be 1 to {IDEMPOTENCY_KEY_LENGTH} "
            "printable ASCII characters (space to ~)"
        )


@dataclass(frozen=True)
class FileOptions:
    """A request's options, checked: what its job row stores."""

    bom: bool = False
    compression: str = "none"
    format: str = "csv"
    outcomes: tuple[str, ...] | None = None  # None: every terminal state
    attempted_from: datetime | None = None  # aware, UTC
    attempted_to: datetime | None = None
    time_zone: str = "UTC"

    def row_values(self) -> dict:
        """As export_jobs.insert_job takes them."""
        return {
            "bom": self.bom,
            "compression": self.compression,
            "format": self.format,
            "outcomes": self.outcomes,
            "attempted_from": self.attempted_from,
            "attempted_to": self.attempted_to,
            "time_zone": self.time_zone,
        }


def check_options(
    bom: object = False,
    compression: object = "none",
    format: object = "csv",
    outcomes: object = None,
    attempted_from: object = None,
    attempted_to: object = None,
    time_zone: object = "UTC",
) -> FileOptions:
    """A request's file options, refused with one line naming the value and the rule
    (InvalidRequest). The CLI and the HTTP API both check with this."""
    if not isinstance(bom, bool):  # 1, "yes" or None would be stored as something else
        raise InvalidRequest(f"option bom {bom!r} must be true or false")
    if compression not in COMPRESSIONS:
        raise InvalidRequest(
            f"option compression {compression!r} must be one of: {', '.join(COMPRESSIONS)}"
        )
    if format not in FORMATS:
        raise InvalidRequest(f"option format {format!r} must be one of: {', '.join(FORMATS)}")
    if format not in FORMATS_WITH_ENVELOPE:
        if compression != "none":
            raise InvalidRequest(
                f"option compression {compression!r} cannot be used with format {format!r}: "
                "it is compressed inside"
            )
        if bom:
            raise InvalidRequest(
                f"option bom true cannot be used with format {format!r}: it is not a text file"
            )
    if not is_known_time_zone(time_zone):
        raise InvalidRequest(
            f"option time_zone {time_zone!r} is not an IANA time zone name "
            "(such as UTC, Europe/Rome, America/New_York)"
        )
    start = _instant("attempted_from", attempted_from)
    end = _instant("attempted_to", attempted_to)
    if start is not None and end is not None and start >= end:
        raise InvalidRequest(
            f"option attempted_from {attempted_from!s} must be before attempted_to "
            f"{attempted_to!s} (the window is [from, to))"
        )
    return FileOptions(
        bom=bom,
        compression=compression,
        format=format,
        outcomes=_outcomes(outcomes),
        attempted_from=start,
        attempted_to=end,
        time_zone=time_zone,
    )


def check_named_options(options: dict) -> FileOptions:
    """check_options of options given by name (a request's, a schedule's); a name that is
    no option is refused like a bad value."""
    try:
        return check_options(**options)
    except TypeError:  # a keyword check_options does not take
        raise InvalidRequest(
            f"unknown option among {', '.join(sorted(options))}: the options are "
            f"{', '.join(FileOptions.__dataclass_fields__)}"
        ) from None


def _outcomes(outcomes: object) -> tuple[str, ...] | None:
    """The states in the contract's order, each once; None stays None (all of them)."""
    if outcomes is None:
        return None
    terminal = ", ".join(TERMINAL_CONTACT_STATES)
    if isinstance(outcomes, str) or not isinstance(outcomes, Sequence) or not outcomes:
        raise InvalidRequest(
            f"option outcomes {outcomes!r} must be a non-empty list of terminal states: {terminal}"
        )
    for state in outcomes:
        if state in TERMINAL_CONTACT_STATES:
            continue
        if state in CONTACT_STATES:
            raise InvalidRequest(
                f"option outcomes: {state!r} is not a terminal state (an export holds only "
                f"contacts whose calling is over: {terminal})"
            )
        raise InvalidRequest(f"option outcomes: {state!r} must be one of: {terminal}")
    return tuple(state for state in TERMINAL_CONTACT_STATES if state in outcomes)


def _instant(name: str, value: object) -> datetime | None:
    """An ISO 8601 instant with its offset (a string, or an aware datetime), in UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            # A "+" in a URL's query arrives as a space.
            hint = " (in a URL query, write its + as %2B)" if " " in value else ""
            raise InvalidRequest(
                f"option {name} {value!r} is not an ISO 8601 date and time "
                f"(e.g. 2026-11-16T00:00:00+01:00){hint}"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise InvalidRequest(f"option {name} {value!r} must be an ISO 8601 date and time")
    if parsed.utcoffset() is None:
        raise InvalidRequest(
            f"option {name} {value!s} has no UTC offset: give one, e.g. "
            f"{parsed.replace(tzinfo=None).isoformat()}+01:00 or ...Z"
        )
    return as_utc(parsed)


@dataclass
class ExportRequests:
    engine: Engine
    objects: ExportObjects
    access_policy: str
    # Exports one user may start in any 60 s (EXPORT_REQUESTS_PER_MINUTE).
    requests_per_minute: int = int(DEFAULTS["EXPORT_REQUESTS_PER_MINUTE"])

    def __post_init__(self) -> None:
        if self.access_policy not in ACCESS_POLICIES:
            raise ValueError(
                f"access_policy {self.access_policy!r} is not one of {ACCESS_POLICIES}"
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, engine: Engine | None = None, s3_client=None
    ) -> ExportRequests:
        """The API the settings describe; tests may hand in their own engine or client."""
        return cls(
            engine=engine if engine is not None else get_engine(settings.database_url),
            objects=ExportObjects.from_settings(settings, client=s3_client),
            access_policy=settings.export_access_policy,
            requests_per_minute=settings.export_requests_per_minute,
        )

    def request_export(
        self,
        campaign_id: str | uuid.UUID,
        user_id: str | uuid.UUID,
        *,
        idempotency_key: str | None = None,
        **options: object,
    ) -> ExportJob:
        """Record a pending export request; the sensor picks it up within seconds.

        The file options (check_options) are stored on the job: `bom` starts the file with
        the UTF-8 byte-order mark, `compression` "gzip" stores its gzip, `format` is csv,
        jsonl, parquet or xlsx, `outcomes` and `attempted_from`/`attempted_to` filter the
        contacts, `time_zone` is the zone its text timestamps are written in. A user who
        started ``requests_per_minute`` exports in the last 60 s is refused (RateLimited).
        With an `idempotency_key`, see request_export_once.
        """
        job, _ = self.request_export_once(
            campaign_id, user_id, idempotency_key=idempotency_key, **options
        )
        return job

    def request_export_once(
        self,
        campaign_id: str | uuid.UUID,
        user_id: str | uuid.UUID,
        *,
        idempotency_key: str | None = None,
        **options: object,
    ) -> tuple[ExportJob, bool]:
        """request_export, and whether the job is an earlier request's: the same key from
        the same user within 24 hours is the first request's job (one row, one run) if
        it asked for the same campaign and options, and IdempotencyKeyReused otherwise.
        Concurrent requests with one key record one job: the unique index decides."""
        campaign_id = parse_uuid(campaign_id, "campaign id")
        user_id = parse_uuid(user_id, "user id")
        checked = check_named_options(options)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        with self._database("recording the export request", write=True) as conn:
            role = self._authorize(conn, user_id)
            self._campaign(conn, campaign_id, user_id, role)
            insert = functools.partial(
                export_jobs.insert_job,
                conn,
                campaign_id,
                requested_by_user_id=user_id,
                idempotency_key=idempotency_key,
                **checked.row_values(),
            )
            if idempotency_key is None:
                self._within_rate_limit(conn, user_id)
                return insert(), False
            first = _first_request(conn, user_id, idempotency_key, campaign_id, checked)
            if first is not None:
                return first, True  # a replay starts nothing, so it is not counted
            self._within_rate_limit(conn, user_id)
            try:
                with conn.begin_nested():
                    job = insert()
            except IntegrityError:
                # A concurrent request with the same key recorded its job first.
                first = _first_request(conn, user_id, idempotency_key, campaign_id, checked)
                if first is None:
                    raise
                return first, True
            return job, False

    def list_exports(
        self,
        campaign_id: str | uuid.UUID,
        user_id: str | uuid.UUID,
        *,
        limit: int | None = None,
        before: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[ExportJob]:
        """The campaign's export jobs, newest first: all of them, or a page of at most
        `limit` older than the keyset `before` (the last listed job's created_at and id)."""
        campaign_id = parse_uuid(campaign_id, "campaign id")
        user_id = parse_uuid(user_id, "user id")
        with self._database("listing export jobs") as conn:
            role = self._authorize(conn, user_id)
            self._campaign(conn, campaign_id, user_id, role)
            return export_jobs.list_jobs(conn, campaign_id, limit=limit, before=before)

    def first_poll_seconds(self, job: ExportJob) -> int:
        """When polling a new job is first worth it, from the exports queued ahead of it."""
        with self._database("counting the exports ahead") as conn:
            ahead = export_jobs.waiting_ahead(conn, job)
        return min(FIRST_POLL_SECONDS + SECONDS_PER_EXPORT_AHEAD * ahead, MAX_FIRST_POLL_SECONDS)

    def get_export(self, job_id: str | uuid.UUID, user_id: str | uuid.UUID) -> ExportJob:
        job_id = parse_uuid(job_id, "export job id")
        user_id = parse_uuid(user_id, "user id")
        with self._database("reading the export job") as conn:
            role = self._authorize(conn, user_id)
            return self._job(conn, job_id, user_id, role)

    def refresh_download_url(self, job_id: str | uuid.UUID, user_id: str | uuid.UUID) -> ExportJob:
        """Re-sign a completed export's file with a fresh expiry.

        S3 is asked outside any transaction; the new link is stored only if the job
        still names the same file (retention or a re-run may have changed it meanwhile).
        """
        job_id = parse_uuid(job_id, "export job id")
        user_id = parse_uuid(user_id, "user id")
        with self._database("reading the export job") as conn:
            role = self._authorize(conn, user_id)
            job = self._job(conn, job_id, user_id, role)
            if job.status != JobStatus.COMPLETED:
                raise NotCompleted(
                    f"export job {job_id} is {job.status}: only a completed export has a "
                    "download URL to refresh"
                )
            if not job.s3_key:
                raise FileGone(f"export job {job_id} has no file: {job.error_message}")
            campaign = self._campaign(conn, job.campaign_id, user_id, role)
        # The bucket the row records, whatever S3_BUCKET_NAME says now.
        objects = self.objects.in_bucket(job.s3_bucket)
        if not self._file_exists(objects, job.s3_key):
            with self._database("recording the missing file", write=True) as conn:
                export_jobs.mark_file_deleted(
                    conn, job_id, s3_key=job.s3_key, message=FILE_MISSING_MESSAGE
                )
            raise FileGone(f"export job {job_id}: {FILE_MISSING_MESSAGE}")
        try:
            url, expires_at = objects.sign(job.s3_key, campaign.name, job.created_at.date())
        except (BotoCoreError, ClientError) as error:
            raise StorageUnavailable(
                f"cannot sign a download link in S3: {describe_storage_error(error)}"
            ) from None
        with self._database("storing the new download link", write=True) as conn:
            stored = export_jobs.update_download_url(
                conn, job_id, s3_key=job.s3_key, download_url=url, url_expires_at=expires_at
            )
            if not stored:
                # Never hand out a fresh link to a file that was deleted meanwhile.
                raise FileGone(
                    f"export job {job_id}: its file was deleted or replaced while the link "
                    "was being refreshed; request a new export"
                )
            return export_jobs.get_job(conn, job_id)

    def cancel_export(self, job_id: str | uuid.UUID, user_id: str | uuid.UUID) -> ExportJob:
        """Cancel an export that has not ended.

        A pending job becomes `cancelled` at once and is never run. A running job gets
        `cancel_requested_at`: the pipeline terminates its run, deletes any file and ends
        it `cancelled` within seconds (the returned job is still `running`). A job that has
        ended already is refused (NotCancellable).
        """
        job_id = parse_uuid(job_id, "export job id")
        user_id = parse_uuid(user_id, "user id")
        with self._database("cancelling the export job", write=True) as conn:
            role = self._authorize(conn, user_id)
            job = self._job(conn, job_id, user_id, role)
            if job.status == JobStatus.PENDING:
                # (None when a run claimed it meanwhile: then it is running.)
                cancelled = export_jobs.cancel_pending(
                    conn, job_id, f"cancelled by user {user_id} before it started"
                )
                if cancelled is not None:
                    return cancelled
            requested = export_jobs.request_cancel(conn, job_id)
            if requested is not None:
                return requested
            job = export_jobs.get_job(conn, job_id)
        raise NotCancellable(
            f"export job {job_id} is {job.status}: only a pending or running export can be "
            "cancelled"
        )

    # The access rules, for the schedule API (service/schedules.py): one place for both.
    def database(self, action: str, write: bool = False):
        return self._database(action, write)

    def authorize(self, conn: Connection, user_id: uuid.UUID) -> str:
        return self._authorize(conn, user_id)

    def campaign(
        self, conn: Connection, campaign_id: uuid.UUID, user_id: uuid.UUID, role: str
    ) -> Campaign:
        return self._campaign(conn, campaign_id, user_id, role)

    def owners_only(self, role: str) -> bool:
        return self._owners_only(role)

    @staticmethod
    def _file_exists(objects: ExportObjects, key: str) -> bool:
        try:
            return objects.exists(key)
        except BucketUnreachable as error:
            raise StorageUnavailable(
                f"cannot reach bucket {objects.bucket!r} in S3: "
                f"{describe_storage_error(error.error)}"
            ) from None
        except (BotoCoreError, ClientError) as error:
            raise StorageUnavailable(
                f"cannot check the export file in S3: {describe_storage_error(error)}"
            ) from None

    @contextlib.contextmanager
    def _database(self, action: str, write: bool = False) -> Iterator[Connection]:
        """A connection (a transaction if write) whose errors carry no SQL parameters."""
        with (
            safe_database_errors(action),
            self.engine.begin() if write else self.engine.connect() as conn,
        ):
            yield conn

    def _within_rate_limit(self, conn: Connection, user_id: uuid.UUID) -> None:
        recent = request_rate.lock_and_count(conn, user_id)
        if recent.count >= self.requests_per_minute:
            wait = recent.retry_after_seconds()
            raise RateLimited(
                f"user {user_id} started {recent.count} exports in the last 60 s, the most "
                f"EXPORT_REQUESTS_PER_MINUTE={self.requests_per_minute} allows: try again "
                f"in {wait} s",
                wait,
            )

    @staticmethod
    def _authorize(conn: Connection, user_id: uuid.UUID) -> str:
        role = get_user_role(conn, user_id)
        if role is None:
            raise PermissionDenied(f"user {user_id} is not a known user and may not use exports")
        if role not in EXPORT_ROLES:
            raise PermissionDenied(
                f"user {user_id} has role {role}; exports need role " + " or ".join(EXPORT_ROLES)
            )
        return role

    def _owners_only(self, role: str) -> bool:
        return self.access_policy == "owner" and role != "admin"

    def _campaign(
        self, conn: Connection, campaign_id: uuid.UUID, user_id: uuid.UUID, role: str
    ) -> Campaign:
        campaign = get_campaign(conn, campaign_id)
        if self._owners_only(role):
            # The same answer for "no such campaign" and "not yours": ids cannot be probed.
            if campaign is None or not _created_by(conn, campaign_id, user_id):
                raise NotFound(
                    f"campaign {campaign_id} does not exist or is not one of your campaigns"
                )
        elif campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        return campaign

    def _job(self, conn: Connection, job_id: uuid.UUID, user_id: uuid.UUID, role: str) -> ExportJob:
        job = export_jobs.get_job(conn, job_id)
        if self._owners_only(role):
            if job is None or not _created_by(conn, job.campaign_id, user_id):
                raise NotFound(
                    f"export job {job_id} does not exist or is not of one of your campaigns"
                )
        elif job is None:
            raise NotFound(f"export job {job_id} does not exist")
        return job


def _first_request(
    conn: Connection, user_id: uuid.UUID, key: str, campaign_id: uuid.UUID, options: FileOptions
) -> ExportJob | None:
    """The job an Idempotency-Key stands for, if its 24 hours are not over."""
    job = export_jobs.job_of_idempotency_key(conn, user_id, key)
    if job is None:
        return None
    if job.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        export_jobs.forget_idempotency_key(conn, job.id)
        return None
    if (job.campaign_id, _request_of(job)) != (campaign_id, options):
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used at {job.created_at.isoformat()} for export "
            f"job {job.id} (campaign {job.campaign_id}, options {json.dumps(job.options)}): "
            "send a new key for another request"
        )
    return job


def _request_of(job: ExportJob) -> FileOptions:
    """The checked options a job was requested with (as check_options gives them)."""
    return FileOptions(
        bom=job.bom,
        compression=job.compression,
        format=job.format,
        outcomes=None if job.outcomes is None else job.outcome_states,
        attempted_from=job.attempted_from,
        attempted_to=job.attempted_to,
        time_zone=job.time_zone,
    )


def _created_by(conn: Connection, campaign_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    creator = conn.execute(
        select(campaigns.c.created_by_user_id).where(campaigns.c.id == campaign_id)
    ).scalar_one_or_none()
    return creator == user_id
