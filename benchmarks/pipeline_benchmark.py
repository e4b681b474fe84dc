"""Request-to-link latency and backfill throughput with the real daemon.

    python benchmarks/pipeline_benchmark.py --requests 10 --backfill 200 --json pipeline.json

Starts, on loopback: a moto S3 server, dagster-daemon and dagster-webserver on the root
dagster.yaml (PostgreSQL instance storage, default run launcher), with fresh app and
instance databases. Latency: insert a pending export_jobs row for a 100-contact
campaign, as the app does, and time until it is completed; one request at a time.
Backfill: launch a backfill of N small campaigns through the webserver's GraphQL API,
as the UI does, and time until every export job is completed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

# The development tooling (dev/) sits beside the package, not in it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dev import local_services, process_group
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade

BUCKET = "bench-pipeline"


def add_campaign(engine, contacts: int) -> str:
    campaign = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO campaigns (id, name) VALUES (:c, 'Bench')"), {"c": campaign})
        conn.execute(
            text(
                "INSERT INTO contacts (campaign_id, phone_number, state, attempts_count) "
                "SELECT :c, '+39', (ARRAY['completed','refused','not_reached']::contact_state[])"
                "[1 + g % 3], 1 FROM generate_series(1, :n) g"
            ),
            {"c": campaign, "n": contacts},
        )
    return campaign


def completed_count(engine, campaigns: list[str]) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM export_jobs WHERE status = 'completed' "
                "AND campaign_id::text = ANY(:ids)"
            ),
            {"ids": campaigns},
        ).scalar_one()


def measure_latency(engine, requests: int) -> list[float]:
    campaign = add_campaign(engine, 100)
    latencies = []
    for _ in range(requests):
        job_id = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO export_jobs (id, campaign_id, status) VALUES (:id, :c, 'pending')"
                ),
                {"id": job_id, "c": campaign},
            )
        start = time.perf_counter()

        def finished(job_id=job_id):
            with engine.connect() as conn:
                return conn.execute(
                    text("SELECT status FROM export_jobs WHERE id = :id"), {"id": job_id}
                ).scalar_one() in ("completed", "failed")

        process_group.wait_for(finished, 120, "an export job", interval=0.05)
        latencies.append(time.perf_counter() - start)
        print(f"  request {len(latencies)}: {latencies[-1]:.2f} s", flush=True)
    return latencies


def measure_backfill(engine, graphql_url: str, campaigns_count: int, timeout: float) -> dict:
    campaigns = [add_campaign(engine, 5) for _ in range(campaigns_count)]

    process_group.wait_for(
        lambda: set(campaigns) <= local_services.campaign_partition_keys(graphql_url),
        120,
        "the campaign partitions",
        interval=1,
    )
    start = time.perf_counter()
    local_services.launch_backfill(graphql_url, campaigns)
    with contextlib.suppress(TimeoutError):
        process_group.wait_for(
            lambda: completed_count(engine, campaigns) >= campaigns_count,
            timeout,
            "the backfill",
            interval=1,
        )
    seconds = time.perf_counter() - start
    done = completed_count(engine, campaigns)
    return {
        "campaigns": campaigns_count,
        "completed": done,
        "seconds": round(seconds, 1),
        "campaigns_per_minute": round(done / seconds * 60, 1),
    }


def measure(engine, graphql_url: str, args: argparse.Namespace) -> dict:
    print("S3: local moto server on loopback; Dagster: daemon + webserver, root dagster.yaml")
    report = {"s3_endpoint": "moto server on loopback"}
    if args.requests:
        print(f"request-to-link latency, 100-contact campaign, {args.requests} requests:")
        latencies = measure_latency(engine, args.requests)
        report["latency_seconds"] = {
            "median": round(statistics.median(latencies), 2),
            "all": [round(x, 2) for x in latencies],
        }
        print(f"median {report['latency_seconds']['median']:.2f} s")
    if args.backfill:
        print(f"backfill of {args.backfill} campaigns launched as the UI does...")
        report["backfill"] = measure_backfill(
            engine, graphql_url, args.backfill, args.backfill_timeout
        )
        b = report["backfill"]
        print(
            f"{b['completed']}/{b['campaigns']} export jobs completed in {b['seconds']} s "
            f"({b['campaigns_per_minute']} campaigns per minute)"
        )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--backfill", type=int, default=200, help="campaigns (0 to skip)")
    parser.add_argument("--backfill-timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="vse-pipeline-bench-"))
    databases = [
        f"vse_bench_app_{uuid.uuid4().hex[:8]}",
        f"vse_bench_dagster_{uuid.uuid4().hex[:8]}",
    ]
    for database in databases:
        local_services.postgres_admin(args.postgres, f'CREATE DATABASE "{database}"')
    app_url, instance_url = (f"{args.postgres}/{database}" for database in databases)
    settings = {"DAGSTER_POSTGRES_URL": instance_url, "DATABASE_URL": app_url}
    engine = get_engine(app_url)
    upgrade(engine)
    try:
        with local_services.local_stack(home, settings, bucket=BUCKET) as stack:
            report = measure(engine, stack.graphql, args)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"written to {args.json}")
    finally:
        engine.dispose()
        for database in databases:
            local_services.postgres_admin(
                args.postgres, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            )
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
