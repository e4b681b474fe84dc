"""Response models, named as in the seed (REQ-018)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...app_db.export_jobs import ExportJob
from ...app_db.job_status import JobStatus
from ...app_db.schema import FORMATS, TERMINAL_CONTACT_STATES
from ..requests import InvalidRequest, check_options

# Plain strings: the OpenAPI schema lists them as an enum of strings, as before.
JobStatusName = Literal[tuple(status.value for status in JobStatus)]
Compression = Literal["none", "gzip"]
Format = Literal[FORMATS]
Outcome = Literal[TERMINAL_CONTACT_STATES]

FORMAT_DESCRIPTION = (
    "csv (the default), jsonl (one JSON object per line), parquet (zstd inside) or xlsx "
    "(one sheet); parquet and xlsx take neither gzip nor a BOM. See docs/export-file.md."
)
OUTCOMES_DESCRIPTION = "Keep only contacts in these terminal states (default: all four)."
ATTEMPTED_FROM_DESCRIPTION = (
    "Keep contacts last attempted at or after this ISO 8601 instant, which must carry its "
    "offset (2026-11-16T00:00:00+01:00, or Z); contacts never attempted are left out."
)
ATTEMPTED_TO_DESCRIPTION = (
    "... and before this one (the window is [attempted_from, attempted_to)); same form."
)
TIME_ZONE_DESCRIPTION = (
    "IANA zone the file's text timestamps are written in, with its offset "
    "(2026-11-16T05:49:55-05:00); UTC (the default) writes Z."
)


def _checked(model: BaseModel, outcomes: list[str] | None) -> None:
    """The service's one check of the options (a refusal is a 422 naming the value)."""
    try:
        check_options(
            bom=model.bom if isinstance(model.bom, bool) else model.bom == "true",
            compression=model.compression,
            format=model.format,
            outcomes=outcomes,
            attempted_from=model.attempted_from,
            attempted_to=model.attempted_to,
            time_zone=model.time_zone,
        )
    except InvalidRequest as error:
        raise ValueError(str(error)) from None


class ExportOptions(BaseModel):
    """A request's file options (POST's JSON body); an unknown option or value is refused
    (422). Strict: `bom` is a JSON boolean, never 1 or "true"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    bom: bool = Field(
        False,
        description="Start the file with the UTF-8 byte-order mark, so that Excel reads "
        "accents and emoji correctly; nothing else in the CSV changes.",
    )
    compression: Compression = Field(
        "none",
        description='"gzip": the object is the gzip of the same CSV or JSON Lines (key and '
        "download name end .csv.gz or .jsonl.gz, Content-Type application/gzip).",
    )
    format: Format = Field("csv", description=FORMAT_DESCRIPTION)
    outcomes: list[Outcome] | None = Field(None, description=OUTCOMES_DESCRIPTION)
    attempted_from: str | None = Field(None, description=ATTEMPTED_FROM_DESCRIPTION)
    attempted_to: str | None = Field(None, description=ATTEMPTED_TO_DESCRIPTION)
    time_zone: str = Field("UTC", description=TIME_ZONE_DESCRIPTION)

    @model_validator(mode="after")
    def _check(self) -> ExportOptions:
        _checked(self, self.outcomes)
        return self


class ExportQueryOptions(BaseModel):
    """The same options as GET's query parameters: each at most once, and `bom` exactly
    `true` or `false` (not 1, yes or on)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    bom: Literal["true", "false"] = Field(
        "false", description=ExportOptions.model_fields["bom"].description
    )
    compression: Compression = Field(
        "none", description=ExportOptions.model_fields["compression"].description
    )

    format: Format = Field("csv", description=FORMAT_DESCRIPTION)
    outcomes: str | None = Field(
        None, description=OUTCOMES_DESCRIPTION + " Comma-separated: refused,not_reached."
    )
    attempted_from: str | None = Field(None, description=ATTEMPTED_FROM_DESCRIPTION)
    attempted_to: str | None = Field(None, description=ATTEMPTED_TO_DESCRIPTION)
    time_zone: str = Field("UTC", description=TIME_ZONE_DESCRIPTION)

    @model_validator(mode="after")
    def _check(self) -> ExportQueryOptions:
        _checked(self, self.outcome_list())
        return self

    def outcome_list(self) -> list[str] | None:
        if self.outcomes is None:
            return None
        return self.outcomes.split(",") if self.outcomes else []

    def options(self) -> ExportOptions:
        return ExportOptions(
            bom=self.bom == "true",
            compression=self.compression,
            format=self.format,
            outcomes=self.outcome_list(),
            attempted_from=self.attempted_from,
            attempted_to=self.attempted_to,
            time_zone=self.time_zone,
        )


class StoredExportOptions(BaseModel):
    """A job's file options as its row holds them (every default shown)."""

    bom: bool
    # Not only the two known values: a job shows what its row holds, even a value written
    # by other tools that this release does not know (such a job fails, naming it).
    compression: Compression | str = Field(
        description='"none" or "gzip", as requested; any other value is one this service '
        "does not know, written to the job's row by other means (the job fails, naming it)."
    )
    format: Format | str = Field(description=FORMAT_DESCRIPTION)
    outcomes: list[str] = Field(description="The terminal states the file keeps.")
    attempted_from: str | None = Field(
        description="Start of the last_attempt_at window, ISO 8601 UTC (null: unbounded)."
    )
    attempted_to: str | None = Field(
        description="End (excluded) of the last_attempt_at window, ISO 8601 UTC (null: unbounded)."
    )
    time_zone: str = Field(description="The zone the file's text timestamps are written in.")


class ExportJobResponse(BaseModel):
    job_id: uuid.UUID
    campaign_id: uuid.UUID
    requested_by_user_id: uuid.UUID | None
    status: JobStatusName
    options: StoredExportOptions
    progress_percent: int | None = Field(
        None,
        description="null while pending, then 0-100, never decreasing, while running; "
        "100 once completed.",
    )
    cancel_requested_at: datetime | None = Field(
        None, description="When a user asked to cancel the running export."
    )
    total_records: int | None
    download_url: str | None
    url_expires_at: datetime | None
    error_message: str | None
    created_at: datetime
    completed_at: datetime | None
    size_bytes: int | None = Field(
        None, description="Size of the stored file in bytes, exactly as downloaded."
    )
    sha256: str | None = Field(
        None,
        description="SHA-256 (hex) of the stored file's bytes, exactly as downloaded; also "
        "the object's x-amz-meta-sha256.",
    )
    schedule_id: uuid.UUID | None = Field(
        None, description="The recurring export this job is a delivery of (null: a request)."
    )
    due_at: datetime | None = Field(None, description="The schedule's due time it delivers.")
    changed_since: datetime | None = Field(
        None,
        description="An incremental delivery holds the terminal contacts changed since this "
        "time (null: every terminal contact).",
    )
    snapshot_at: datetime | None = Field(
        None,
        description="An incremental delivery's rows reach this time: the next delivery's "
        "changed_since once this one completed.",
    )

    @classmethod
    def of(cls, job: ExportJob) -> ExportJobResponse:
        return cls(
            job_id=job.id,
            campaign_id=job.campaign_id,
            requested_by_user_id=job.requested_by_user_id,
            status=job.status,
            options=StoredExportOptions(**job.options),
            progress_percent=job.progress_percent,
            cancel_requested_at=job.cancel_requested_at,
            total_records=job.total_records,
            download_url=job.download_url,
            url_expires_at=job.url_expires_at,
            error_message=job.error_message,
            created_at=job.created_at,
            completed_at=job.completed_at,
            size_bytes=job.size_bytes,
            sha256=job.sha256,
            schedule_id=job.schedule_id,
            due_at=job.due_at,
            changed_since=job.changed_since,
            snapshot_at=job.snapshot_at,
        )


class ExportJobCreateResponse(BaseModel):
    job_id: uuid.UUID
    campaign_id: uuid.UUID
    status: JobStatusName
    options: ExportOptions
    created_at: datetime
    message: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where: e.g. ["query", "compression"].')
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (`application/problem+json`), with a stable `code`."""

    type: str = Field(description="https://voicesurvey.example/problems/{code}")
    title: str
    status: int
    detail: str = Field(description="One line for a person; its wording may change.")
    code: str = Field(description="The cause, stable, snake_case: branch on this.")
    errors: list[FieldError] | None = Field(
        None, description="validation_failed only: each field and what is wrong with it."
    )
