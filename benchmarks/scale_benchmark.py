"""How the instance copes with many campaign partitions (figures for deploy/SCALING.md).

    python benchmarks/scale_benchmark.py --campaigns 1000 --campaigns 10000 --json scale.json

For each N: a fresh app database with N campaigns and a fresh PostgreSQL Dagster
instance; times the campaign-partitions sensor's first tick (adds N partitions) and a
steady tick, the export-requests sensor's tick with 50 pending requests, and, through
a real dagster-webserver, the GraphQL queries behind the asset's partitions page.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
from sqlalchemy import text

# The development tooling (dev/) sits beside the package, not in it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dev import local_services, process_group
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.pipeline.resources import build_resources
from voicesurvey_exports.pipeline.sensors import (
    build_export_requests_sensor,
    campaign_partitions_sensor,
)
from voicesurvey_exports.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PARTITION_STATUS = """
{ assetNodes(assetKeys: [{path: ["campaign_export"]}]) {
    assetPartitionStatuses { __typename
      ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } }"""


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(campaigns: int, server: str) -> dict:
    names = [f"vse_scale_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("app", "dagster")]
    for name in names:
        local_services.postgres_admin(server, f'CREATE DATABASE "{name}"')
    app_url, instance_url = (f"{server}/{name}" for name in names)
    home = Path(tempfile.mkdtemp(prefix="vse-scale-"))
    shutil.copy(local_services.DEFAULT.dagster_yaml, home / "dagster.yaml")
    engine = get_engine(app_url)
    started = []
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO campaigns (id, name) SELECT gen_random_uuid(), 'C' || g "
                    "FROM generate_series(1, :n) g"
                ),
                {"n": campaigns},
            )
            conn.execute(
                text("INSERT INTO export_jobs (campaign_id) SELECT id FROM campaigns LIMIT 50")
            )
        os.environ["DAGSTER_POSTGRES_URL"] = instance_url
        settings = Settings.from_env({"DATABASE_URL": app_url})
        resources = {"app_db": build_resources(settings)["app_db"]}
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def tick(sensor):
                context = dg.build_sensor_context(instance=instance, resources=resources)
                result = sensor(context)
                for request in getattr(result, "dynamic_partitions_requests", None) or []:
                    instance.add_dynamic_partitions(
                        request.partitions_def_name, list(request.partition_keys)
                    )
                return result

            first, _ = timed(lambda: tick(campaign_partitions_sensor))
            steady = statistics.median(
                timed(lambda: tick(campaign_partitions_sensor))[0] for _ in range(5)
            )
            requests_sensor = build_export_requests_sensor(settings)
            request_tick = statistics.median(
                timed(lambda: tick(requests_sensor))[0] for _ in range(5)
            )
        web_port = process_group.free_port()
        env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": app_url}
        started = local_services.start_dagster(home, env, REPO, web_port=web_port)
        url = f"http://127.0.0.1:{web_port}/graphql"
        process_group.wait_for(lambda: _ready(url), 120, "the webserver", interval=1)
        keys_seconds = statistics.median(
            timed(lambda: local_services.campaign_partition_keys(url))[0] for _ in range(5)
        )
        status_seconds = statistics.median(
            timed(lambda: local_services.graphql(url, PARTITION_STATUS))[0] for _ in range(5)
        )
        return {
            "campaigns": campaigns,
            "partitions_sensor_first_tick_seconds": round(first, 3),
            "partitions_sensor_steady_tick_seconds": round(steady, 3),
            "requests_sensor_tick_seconds_50_pending": round(request_tick, 3),
            "graphql_partition_keys_seconds": round(keys_seconds, 3),
            "graphql_partition_statuses_seconds": round(status_seconds, 3),
        }
    finally:
        process_group.stop_all(started)
        engine.dispose()
        os.environ.pop("DAGSTER_POSTGRES_URL", None)
        for name in names:
            local_services.postgres_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        return bool(local_services.campaign_partition_keys(url) is not None)
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaigns", type=int, action="append")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    report = [measure(n, args.postgres) for n in (args.campaigns or [1000, 10000])]
    for row in report:
        print(json.dumps(row))
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
