"""Export speed and memory: PostgreSQL's COPY floor, the naive pandas path and this
project's export, on a fresh PostgreSQL database and a local moto S3 server.

    python benchmarks/export_benchmark.py --rows 100000 --rows 1000000 --json results.json

Each path runs several times, each time in a fresh process; the median wall time and
the median peak RSS are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
from sqlalchemy import text

# The development tooling (dev/) sits beside the package, not in it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dev import local_services, process_group
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade

HERE = Path(__file__).resolve().parent
BUCKET = "bench-exports"
PATHS = ("floor", "naive", "project", "jsonl", "parquet", "xlsx")
LABELS = {
    "floor": "1 floor: COPY (query) TO STDOUT WITH CSV + upload",
    "naive": "2 naive pandas: read_sql all, to_csv, upload",
    "project": "3 this project: the ops' export steps",
    "jsonl": "4 this project, format jsonl",
    "parquet": "5 this project, format parquet",
    "xlsx": "6 this project, format xlsx",
}
FORMATS = ("jsonl", "parquet", "xlsx")

# Terminal contacts with realistic answers (a third answered, accents, emoji, quotes,
# newlines, formulas), generated inside PostgreSQL.
GENERATE_SQL = """
INSERT INTO campaigns (id, name, status) VALUES (%(campaign)s, 'Benchmark campaign', 'completed');
INSERT INTO contacts (id, campaign_id, external_contact_id, phone_number, email, state,
                      attempts_count, last_attempt_at)
SELECT gen_random_uuid(), %(campaign)s, 'CRM-' || lpad(g::text, 8, '0'),
       '+39055' || lpad((g::bigint * 7919 %% 10000000)::text, 7, '0'), 'c' || g || '@example.com',
       (ARRAY['completed', 'completed', 'refused', 'not_reached',
              'excluded']::contact_state[])[1 + g %% 5],
       1 + g %% 3, timestamptz '2026-11-01 08:00:00+00' + g * interval '2 seconds'
FROM generate_series(1, %(rows)s) g;
INSERT INTO survey_responses (id, contact_id, campaign_id, q1_answer, q2_answer, q3_answer,
                              completed_at)
SELECT gen_random_uuid(), id, campaign_id,
       (ARRAY['Sì, molto soddisfatto', 'Servizio "eccellente", grazie',
              'Größtenteils zufrieden, aber die Wartezeit war zu lang',
              'Prima riga' || chr(10) || 'seconda riga', 'Très bien 👍',
              '=SUM(A1:A9)', 'No'])[1 + abs(hashtext(id::text)) %% 7],
       (ARRAY['1', '2', '3', '4', '5'])[1 + abs(hashtext(id::text || 'q2')) %% 5],
       CASE WHEN abs(hashtext(id::text)) %% 4 = 0 THEN NULL
            ELSE 'Commento libero numero ' || attempts_count END,
       last_attempt_at + interval '3 minutes'
FROM contacts WHERE campaign_id = %(campaign)s AND state = 'completed';
"""


def generate_campaign(engine, campaign_id: str, rows: int) -> None:
    """A campaign of `rows` terminal contacts with answers (GENERATE_SQL), in one go."""
    raw = engine.raw_connection()
    with raw.cursor() as cursor:
        cursor.execute(GENERATE_SQL, {"campaign": campaign_id, "rows": rows})
    raw.commit()
    raw.close()
    # Vacuumed as a production table would be: otherwise autovacuum wakes up on the new
    # million rows in the middle of a measurement, and the first reads set hint bits.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE contacts, survey_responses"))


def empty_bucket(bucket: str = BUCKET, endpoint_url: str | None = None) -> None:
    """Each run starts with an empty bucket: moto slows down as it holds more objects."""
    s3 = (
        local_services.s3_client(endpoint_url)
        if endpoint_url
        else boto3.client("s3", region_name="eu-central-1")
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])


def run_path(path: str, database_url: str, campaign_id: str, env: dict) -> dict:
    empty_bucket()
    output = subprocess.run(
        [sys.executable, str(HERE / "export_paths.py"), path, database_url, campaign_id, BUCKET],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if output.returncode != 0:
        raise SystemExit(f"error: path {path} failed:\n{output.stderr}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def measure(rows: int, repeat: int, server_url: str, env: dict) -> dict:
    database = f"vse_bench_{uuid.uuid4().hex[:8]}"
    local_services.postgres_admin(server_url, f'CREATE DATABASE "{database}"')
    database_url = f"{server_url}/{database}"
    engine = get_engine(database_url)
    try:
        upgrade(engine)
        campaign_id = str(uuid.uuid4())
        generate_campaign(engine, campaign_id, rows)
        # One untimed run warms PostgreSQL's cache, then the paths take turns, so that
        # neither a cold cache nor a noisy minute lands on one path only.
        run_path("floor", database_url, campaign_id, env)
        all_runs = {path: [] for path in PATHS}
        for _ in range(repeat):
            for path in PATHS:
                all_runs[path].append(run_path(path, database_url, campaign_id, env))
        results = {}
        for path, runs in all_runs.items():
            wall = statistics.median(run["wall_seconds"] for run in runs)
            results[path] = {
                "wall_seconds": round(wall, 3),
                "rows_per_second": round(rows / wall),
                "peak_rss_mb": round(statistics.median(run["peak_rss_mb"] for run in runs), 1),
                "bytes": runs[-1]["bytes"],
                "runs_wall_seconds": [round(run["wall_seconds"], 3) for run in runs],
            }
            if "op_seconds" in runs[0]:
                results[path]["op_seconds"] = {
                    op: round(statistics.median(run["op_seconds"][op] for run in runs), 3)
                    for op in runs[0]["op_seconds"]
                }
        results["ratio_project_to_floor"] = round(
            results["project"]["wall_seconds"] / results["floor"]["wall_seconds"], 2
        )
        results["ratio_naive_to_project"] = round(
            results["naive"]["wall_seconds"] / results["project"]["wall_seconds"], 2
        )
        for file_format in FORMATS:
            results[f"ratio_{file_format}_to_csv"] = round(
                results[file_format]["wall_seconds"] / results["project"]["wall_seconds"], 2
            )
        return results
    finally:
        engine.dispose()
        local_services.postgres_admin(
            server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
        )


def print_table(rows: int, results: dict) -> None:
    print(f"\nN = {rows:,} terminal contacts")
    print(f"{'path':52} {'wall s':>8} {'rows/s':>10} {'peak RSS MB':>12}")
    for path in PATHS:
        r = results[path]
        print(
            f"{LABELS[path]:52} {r['wall_seconds']:>8.2f} {r['rows_per_second']:>10,} "
            f"{r['peak_rss_mb']:>12.0f}"
        )
    print(
        f"ratio 3/1 (project / floor): {results['ratio_project_to_floor']:.2f}   "
        f"ratio 2/3 (naive / project): {results['ratio_naive_to_project']:.2f}"
    )
    if rows >= 1_000_000:
        ratio, rss = results["ratio_project_to_floor"], results["project"]["peak_rss_mb"]
        print(f"target: project / floor at most 1.5: {ratio:.2f} {verdict(ratio <= 1.5)}")
        print(f"target: project peak RSS at most 300 MB: {rss:.0f} {verdict(rss <= 300)}")
        for file_format in FORMATS:
            ratio = results[f"ratio_{file_format}_to_csv"]
            rss = results[file_format]["peak_rss_mb"]
            print(
                f"target: {file_format} within 2x of csv: {ratio:.2f} {verdict(ratio <= 2)}; "
                f"peak RSS at most 300 MB: {rss:.0f} {verdict(rss <= 300)}"
            )


def verdict(met: bool) -> str:
    return "(met)" if met else "(NOT met)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="terminal contacts (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (median reported)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server URL without a database name",
    )
    args = parser.parse_args()
    row_counts = args.rows or [100_000]

    s3_port = process_group.free_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        **local_services.LOCAL_CREDENTIALS,
        "AWS_REGION": "eu-central-1",
    }
    os.environ.update(env)
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))
    moto = local_services.start_s3_server(s3_port, workdir / f"bench-moto-{s3_port}.log", env)
    try:
        local_services.create_bucket(env["AWS_ENDPOINT_URL"], BUCKET)
        print(
            f"S3: local moto server on http://127.0.0.1:{s3_port} (loopback), "
            f"PostgreSQL: {args.postgres}; {args.repeat} runs per path, medians"
        )
        report = {"s3_endpoint": "moto server on loopback", "repeat": args.repeat, "results": {}}
        for rows in row_counts:
            results = measure(rows, args.repeat, args.postgres, env)
            report["results"][str(rows)] = results
            print_table(rows, results)
        if len(row_counts) > 1:
            small, large = (report["results"][str(n)] for n in (min(row_counts), max(row_counts)))
            report["project_rss_growth"] = round(
                large["project"]["peak_rss_mb"] / small["project"]["peak_rss_mb"], 2
            )
            print(
                f"\nproject peak RSS at {max(row_counts):,} / at {min(row_counts):,}: "
                f"{report['project_rss_growth']:.2f}"
            )
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwritten to {args.json}")
    finally:
        process_group.stop_all([moto])
    return 0


if __name__ == "__main__":
    sys.exit(main())
