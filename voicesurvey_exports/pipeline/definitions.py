"""The one Definitions object, built from validated environment settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from ..settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
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


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Loading the pipeline (pandas, Arrow, dagster-aws, the definitions) makes a few
    hundred thousand objects that live as long as the process, and Python's cyclic
    collector, which runs after every 700 new objects and scans the whole heap each time
    it has grown by a quarter, went over them again and again: 0.8 of a run worker's 1.9
    CPU-seconds of imports, and on Dagster's own launcher every run is a new process. So
    the collector waits while they are made, and then leaves them out of its scans for
    good (gc.freeze); it is as it was for everything made afterwards."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def _load() -> dg.Definitions:
    from ..settings import Settings

    return build_defs(Settings.from_env())


with _collector_paused():
    defs = _load()
