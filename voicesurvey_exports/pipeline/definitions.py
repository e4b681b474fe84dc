"""The one Definitions object, built from validated environment settings."""

from __future__ import annotations

import dagster as dg

from ..settings import Settings
from .assets import campaign_export, campaign_export_job
from .resources import build_resources
from .retention import export_retention_job, export_retention_schedule
from .schedule_sensor import build_export_schedules_sensor
from .sensors import (
    build_export_requests_sensor,
    build_stuck_requests_sensor,
    campaign_partitions_sensor,
    export_cancel_sensor,
    export_run_canceled_sensor,
    export_run_failure_sensor,
)
from .webhooks import build_export_webhook_sensors, webhook_resources


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[campaign_export],
        jobs=[campaign_export_job, export_retention_job],
        schedules=[export_retention_schedule],
        sensors=[
            build_export_requests_sensor(settings),
            build_stuck_requests_sensor(settings),
            build_export_schedules_sensor(settings),
            campaign_partitions_sensor,
            export_run_failure_sensor,
            export_run_canceled_sensor,
            export_cancel_sensor,
            *build_export_webhook_sensors(settings),  # only with EXPORT_WEBHOOK_URL set
        ],
        # The URL may hold a password: pass it by name so the UI never shows it.
        resources={
            **build_resources(settings, database_url=dg.EnvVar("DATABASE_URL")),
            **webhook_resources(settings),
        },
        executor=dg.in_process_executor,
    )


defs = build_defs(Settings.from_env())
