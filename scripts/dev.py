"""Run the pipeline locally: app database, S3 endpoint, Dagster UI and daemon (`make dev`).

Uses $DATABASE_URL (default: a `voicesurvey_dev` database on the local PostgreSQL,
created if missing) and $AWS_ENDPOINT_URL (default: a moto S3 server on loopback,
started here). Dagster keeps its own state under .local/dagster_home. Ctrl-C stops
everything this script started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psycopg2
from sqlalchemy.engine import make_url

from voicesurvey_exports import process_group
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.sample_data import CAMPAIGN_ID, MANAGER_ID, seed_sample_data
from voicesurvey_exports.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / ".local"
BIN = Path(sys.executable).parent


def ensure_postgres_database(database_url: str) -> None:
    url = make_url(database_url)
    if not url.drivername.startswith("postgres"):
        return
    admin = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname="postgres",
    )
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{url.database}"')
    admin.close()


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def main() -> int:
    LOCAL.mkdir(exist_ok=True)
    env = os.environ  # children and this process's boto3 client share one environment
    env.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/voicesurvey_dev")
    env.setdefault("DAGSTER_HOME", str(LOCAL / "dagster_home"))
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    ui_port = int(env.get("DAGSTER_PORT", "3000"))
    processes: list[subprocess.Popen] = []
    try:
        if not env.get("AWS_ENDPOINT_URL"):
            s3_port = int(env.get("S3_PORT", "5001"))
            env.update(
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
                AWS_ACCESS_KEY_ID="local",
                AWS_SECRET_ACCESS_KEY="local",
            )
            processes.append(
                process_group.start(
                    [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                    LOCAL / "moto.log",
                    env,
                )
            )
            process_group.wait_for(lambda: process_group.port_open(s3_port), 30, "moto server")
        settings = Settings.from_env(env)
        s3 = boto3.client(
            "s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
        if settings.s3_bucket_name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(
                Bucket=settings.s3_bucket_name,
                CreateBucketConfiguration={"LocationConstraint": settings.aws_region},
            )

        ensure_postgres_database(settings.database_url)
        engine = get_engine(settings.database_url)
        upgrade(engine)
        seeded = seed_sample_data(engine)

        exports = " ".join(
            f"{name}={shlex.quote(env[name])}"
            for name in (
                "DATABASE_URL",
                "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            )
            if env.get(name)
        )
        (LOCAL / "dev.env").write_text(f"export {exports}\n")
        processes.append(
            process_group.start(
                [str(BIN / "dg"), "dev", "-h", "127.0.0.1", "-p", str(ui_port)],
                LOCAL / "dagster.log",
                env,
                cwd=REPO,
            )
        )
        print(
            f"""
Dagster UI:   http://127.0.0.1:{ui_port}   (logs in .local/; Ctrl-C stops everything)
App database: {make_url(settings.database_url).render_as_string(hide_password=True)}\
{"  (sample campaign added)" if seeded else ""}
S3 endpoint:  {settings.aws_endpoint_url}, bucket {settings.s3_bucket_name}

In another shell, request an export and download it:
  source .local/dev.env
  .venv/bin/voicesurvey-exports request --campaign-id {CAMPAIGN_ID} --user-id {MANAGER_ID}
  .venv/bin/voicesurvey-exports status JOB_ID --user-id {MANAGER_ID}
  curl -o export.csv "DOWNLOAD_URL"
""",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        while all(process.poll() is None for process in processes):
            time.sleep(1)
        print("a local service stopped unexpectedly; see the logs in .local/", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        process_group.stop_all(processes)


if __name__ == "__main__":
    sys.exit(main())
