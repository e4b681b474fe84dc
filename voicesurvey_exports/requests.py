"""The app-side export API: the seed's four operations, with their role checks.

The app's endpoints call these; the CLI does too. They only read and write
export_jobs rows (and re-sign links): the Dagster pipeline does the exporting.
A rejected call writes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import boto3
from sqlalchemy import Connection, Engine

from .app_db import export_jobs
from .app_db.campaigns import get_campaign, get_user_role
from .app_db.engine import get_engine
from .app_db.export_jobs import ExportJob
from .app_db.schema import EXPORT_ROLES
from .settings import Settings
from .storage import download_filename, presigned_download_url


class ExportRequestError(Exception):
    """A request that cannot be served; the message is one line for a person."""


class InvalidRequest(ExportRequestError):
    pass


class PermissionDenied(ExportRequestError):
    pass


class NotFound(ExportRequestError):
    pass


def parse_uuid(value: str | uuid.UUID, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidRequest(f"{what} {value!r} is not a valid UUID") from None


@dataclass
class ExportRequests:
    engine: Engine
    s3_client: object
    bucket: str
    url_ttl_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportRequests:
        return cls(
            engine=get_engine(settings.database_url),
            s3_client=boto3.client(
                "s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
            ),
            bucket=settings.s3_bucket_name,
            url_ttl_seconds=settings.url_ttl_seconds,
        )

    def request_export(self, campaign_id: str | uuid.UUID, user_id: str | uuid.UUID) -> ExportJob:
        """Record a pending export request; the sensor picks it up within seconds."""
        campaign_id = parse_uuid(campaign_id, "campaign id")
        user_id = parse_uuid(user_id, "user id")
        with self.engine.begin() as conn:
            self._authorize(conn, user_id)
            self._campaign(conn, campaign_id)
            return export_jobs.insert_job(conn, campaign_id, requested_by_user_id=user_id)

    def list_exports(
        self, campaign_id: str | uuid.UUID, user_id: str | uuid.UUID
    ) -> list[ExportJob]:
        """The campaign's export jobs, newest first."""
        campaign_id = parse_uuid(campaign_id, "campaign id")
        user_id = parse_uuid(user_id, "user id")
        with self.engine.connect() as conn:
            self._authorize(conn, user_id)
            self._campaign(conn, campaign_id)
            return export_jobs.list_jobs(conn, campaign_id)

    def get_export(self, job_id: str | uuid.UUID, user_id: str | uuid.UUID) -> ExportJob:
        job_id = parse_uuid(job_id, "export job id")
        user_id = parse_uuid(user_id, "user id")
        with self.engine.connect() as conn:
            self._authorize(conn, user_id)
            return self._job(conn, job_id)

    def refresh_download_url(self, job_id: str | uuid.UUID, user_id: str | uuid.UUID) -> ExportJob:
        """Re-sign a completed export's file with a fresh expiry."""
        job_id = parse_uuid(job_id, "export job id")
        user_id = parse_uuid(user_id, "user id")
        with self.engine.begin() as conn:
            self._authorize(conn, user_id)
            job = self._job(conn, job_id)
            if job.status != "completed":
                raise InvalidRequest(
                    f"export job {job_id} is {job.status}: only a completed export has a "
                    "download URL to refresh"
                )
            if not job.s3_key:
                raise InvalidRequest(f"export job {job_id} has no file: {job.error_message}")
            campaign = self._campaign(conn, job.campaign_id)
            url, expires_at = presigned_download_url(
                self.s3_client,
                self.bucket,
                job.s3_key,
                self.url_ttl_seconds,
                download_filename(campaign.name, job.created_at.date()),
            )
            export_jobs.update_download_url(conn, job_id, url, expires_at)
            return export_jobs.get_job(conn, job_id)

    @staticmethod
    def _authorize(conn: Connection, user_id: uuid.UUID) -> None:
        role = get_user_role(conn, user_id)
        if role is None:
            raise PermissionDenied(f"user {user_id} is not a known user and may not use exports")
        if role not in EXPORT_ROLES:
            raise PermissionDenied(
                f"user {user_id} has role {role}; exports need role " + " or ".join(EXPORT_ROLES)
            )

    @staticmethod
    def _campaign(conn: Connection, campaign_id: uuid.UUID):
        campaign = get_campaign(conn, campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        return campaign

    @staticmethod
    def _job(conn: Connection, job_id: uuid.UUID) -> ExportJob:
        job = export_jobs.get_job(conn, job_id)
        if job is None:
            raise NotFound(f"export job {job_id} does not exist")
        return job
