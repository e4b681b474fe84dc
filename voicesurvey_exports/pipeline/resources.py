"""Dagster resources of the export pipeline, all built from one Settings value."""

from __future__ import annotations

import dagster as dg
from dagster_aws.s3 import S3PickleIOManager, S3Resource
from pydantic import PrivateAttr
from sqlalchemy import Engine

from ..app_db.engine import get_engine
from ..export_file.s3_object import ExportObjects
from ..settings import OP_OUTPUTS_S3_PREFIX, Settings
from . import premade_clients
from .spool import SpoolStorage


class AppDatabase(dg.ConfigurableResource):
    """The VoiceSurveyAgent app database (PostgreSQL, or SQLite for the local demo)."""

    database_url: str

    @property
    def engine(self) -> Engine:
        return get_engine(self.database_url)


class ExportDestination(dg.ConfigurableResource):
    """Where export files go and how long their download links and files live.

    Ops and sensors reach S3 through this resource, not by requiring dagster-aws's
    S3Resource: an op that requires S3Resource gets a new boto3 client made for it (about
    0.1-0.2 s) whether it talks to S3 or not. Here one client serves the whole run: on
    the single-node fast path, the one the run workers' forkserver made
    (premade_clients.py)."""

    region_name: str
    # A local S3 server (moto, MinIO) instead of AWS; unset on AWS.
    endpoint_url: str | None
    bucket: str
    prefix: str
    url_ttl_seconds: int
    # SSE-KMS key for the objects; unset means SSE-S3 (AES256).
    kms_key_id: str | None
    # Files (and their links) are deleted this many days after the export completed.
    retention_days: int

    _objects: ExportObjects | None = PrivateAttr(default=None)

    def s3_resource(self) -> S3Resource:
        return S3Resource(region_name=self.region_name, endpoint_url=self.endpoint_url)

    def objects(self) -> ExportObjects:
        if self._objects is None:
            self._objects = ExportObjects(
                client=premade_clients.get_client(self.s3_resource()),
                bucket=self.bucket,
                prefix=self.prefix,
                url_ttl_seconds=self.url_ttl_seconds,
                kms_key_id=self.kms_key_id,
            )
        return self._objects


def build_resources(settings: Settings, database_url: str | dg.EnvVar | None = None) -> dict:
    """Every resource the pipeline's assets, sensors and jobs use.

    The Dagster definitions pass the database URL as EnvVar("DATABASE_URL"): it may hold
    a password, and an EnvVar is shown in the UI by name only. Tests pass it directly.
    """
    destination = ExportDestination(
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        bucket=settings.s3_bucket_name,
        prefix=settings.s3_export_prefix,
        url_ttl_seconds=settings.url_ttl_seconds,
        kms_key_id=settings.kms_key_id,
        retention_days=settings.retention_days,
    )
    return {
        "app_db": AppDatabase(
            database_url=database_url if database_url is not None else settings.database_url
        ),
        "destination": destination,
        "spool": SpoolStorage(base_dir=settings.spool_dir),
        "io_manager": build_io_manager(settings, destination),
    }


def build_io_manager(settings: Settings, destination: ExportDestination) -> dg.IOManagerDefinition:
    """Ops hand each other ids, paths and counts (never rows), stored so that a retry or
    a re-execution can load them: on one machine in the instance's local_artifact_storage;
    with EXPORT_IO_STORAGE=s3 in the export bucket, so that a run in another container
    (ECS task, Kubernetes pod, Docker container) finds them without a shared volume."""
    if settings.io_storage == "s3":
        return S3PickleIOManager(
            s3_resource=destination.s3_resource(),
            s3_bucket=settings.s3_bucket_name,
            s3_prefix=OP_OUTPUTS_S3_PREFIX,
        )
    return dg.FilesystemIOManager()
