"""The one Definitions object, built from validated environment settings."""

from __future__ import annotations

import dagster as dg
from dagster_aws.s3 import S3Resource

from ..settings import Settings
from .assets import campaign_export, campaign_export_job
from .resources import AppDatabase, ExportDestination
from .retention import export_retention_job, export_retention_schedule
from .sensors import (
    build_export_requests_sensor,
    campaign_partitions_sensor,
    export_run_canceled_sensor,
    export_run_failure_sensor,
)
from .spool import SpoolStorage


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[campaign_export],
        jobs=[campaign_export_job, export_retention_job],
        schedules=[export_retention_schedule],
        sensors=[
            build_export_requests_sensor(
                settings.sensor_interval_seconds, settings.sensor_batch_size
            ),
            campaign_partitions_sensor,
            export_run_failure_sensor,
            export_run_canceled_sensor,
        ],
        resources={
            # The URL may hold a password: pass it by name so the UI never shows it.
            "app_db": AppDatabase(database_url=dg.EnvVar("DATABASE_URL")),
            "s3": S3Resource(
                region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
            ),
            "destination": ExportDestination(
                bucket=settings.s3_bucket_name,
                prefix=settings.s3_export_prefix,
                url_ttl_seconds=settings.url_ttl_seconds,
                kms_key_id=settings.kms_key_id,
                retention_days=settings.retention_days,
            ),
            "spool": SpoolStorage(base_dir=settings.spool_dir),
            # Ops hand each other ids, paths and counts (never rows); they are kept in
            # the instance's storage so that retries and re-execution can load them.
            "io_manager": dg.FilesystemIOManager(),
        },
        executor=dg.in_process_executor,
    )


defs = build_defs(Settings.from_env())
