"""The production image and DockerRunLauncher: image size, build time (cold and warm),
and request-to-link latency with every run in its own container.

    python benchmarks/container_benchmark.py --requests 10 --json containers.json

Build, cold: the Debian base made anew (debootstrap), the runtime wheels downloaded into
an empty folder and `docker build --no-cache`; warm: `make image` right after, with
nothing changed (docker's layer cache, the kept wheels; the project's wheel is built
again). The cold build replaces the base and voicesurvey-exports:<version> and :latest
with equal images.
Latency: the image's code server, daemon and webserver as containers on deploy/
dagster-docker.yaml (dev/container_stack.py: host networking, this machine's
PostgreSQL, a moto server); insert a pending export_jobs row for a 100-contact campaign,
as the app does, and time until it is completed; one request at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipeline_benchmark import measure_latency, percentile
from dev import container_stack, local_services
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-containers"
UV = REPO / ".local/uv/bin/uv"


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, check=True)
    return time.perf_counter() - start


def measure_build(cold: bool) -> dict:
    report = {}
    if cold:
        # The base made anew under its usual tag (so that the warm build below starts from
        # the same base, as `make image` does), the wheels into an empty folder.
        base = "voicesurvey-exports-base:bookworm"
        subprocess.run(["docker", "rmi", base], cwd=REPO, capture_output=True)
        folder = Path(tempfile.mkdtemp(prefix="vse-image-bench-"))
        try:
            report["cold_base_seconds"] = round(timed(["scripts/base-image.sh", base]), 1)
            report["cold_image_seconds"] = round(
                timed(
                    ["scripts/build-image.sh", str(UV)],
                    {
                        "BASE_IMAGE": base,
                        "IMAGE_BUILD_DIR": str(folder),
                        "DOCKER_BUILD_FLAGS": "--no-cache",
                    },
                ),
                1,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        report["cold_seconds"] = round(
            report["cold_base_seconds"] + report["cold_image_seconds"], 1
        )
        cold_total, cold_base = report["cold_seconds"], report["cold_base_seconds"]
        print(f"cold build: {cold_total:.0f} s (base {cold_base:.0f} s)", flush=True)
    report["warm_seconds"] = round(timed(["make", "image"]), 1)
    print(f"warm build: {report['warm_seconds']:.0f} s", flush=True)
    size = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", container_stack.image_tag()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report["image_mb"] = round(int(size) / 1e6)
    print(f"image {container_stack.image_tag()}: {report['image_mb']} MB", flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()

    report = {"build": measure_build(cold=not args.no_cold)}
    missing = container_stack.docker_missing()
    if missing:
        print(f"container benchmark: {missing}", file=sys.stderr)
        return 1

    home = Path(tempfile.mkdtemp(prefix="vse-container-bench-"))
    databases = [
        f"vse_bench_app_{uuid.uuid4().hex[:8]}",
        f"vse_bench_dagster_{uuid.uuid4().hex[:8]}",
    ]
    for database in databases:
        local_services.postgres_admin(args.postgres, f'CREATE DATABASE "{database}"')
    app_url, instance_url = (f"{args.postgres}/{database}" for database in databases)
    engine = get_engine(app_url)
    upgrade(engine)
    try:
        settings = {"DATABASE_URL": app_url, "DAGSTER_POSTGRES_URL": instance_url}
        with container_stack.container_stack(home, settings, bucket=BUCKET):
            print(f"request-to-link, DockerRunLauncher, {args.requests} requests:", flush=True)
            latencies, _ = measure_latency(engine, args.requests)
        report["latency_seconds"] = {
            "median": round(statistics.median(latencies), 2),
            "p90": round(percentile(latencies, 0.9), 2),
            "max": round(max(latencies), 2),
            "all": [round(value, 2) for value in latencies],
        }
        print(
            f"median {report['latency_seconds']['median']:.2f} s, "
            f"p90 {report['latency_seconds']['p90']:.2f} s"
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
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
