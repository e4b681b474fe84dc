"""One export path, run in its own process so that its peak RSS is its own.

    python benchmarks/export_paths.py {floor,naive,project} DATABASE_URL CAMPAIGN_ID BUCKET

Prints one JSON line: wall seconds of the export itself (after imports), rows, bytes
and the process's peak RSS. AWS_ENDPOINT_URL points at the S3 server.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3


def s3_client():
    return boto3.client("s3", region_name=os.environ.get("AWS_REGION", "eu-central-1"))


def floor(database_url: str, campaign_id: uuid.UUID, bucket: str, workdir: Path) -> dict:
    """PostgreSQL's own COPY of the same query to a file, uploaded the same way."""
    import psycopg2
    from sqlalchemy.dialects import postgresql

    from voicesurvey_exports.app_db.contacts import terminal_contacts_query
    from voicesurvey_exports.app_db.engine import sync_database_url
    from voicesurvey_exports.export_file.s3_object import upload_csv_file

    sql = terminal_contacts_query(campaign_id).compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    dsn = sync_database_url(database_url).replace("postgresql+psycopg2", "postgresql")
    start = time.perf_counter()
    path = workdir / "floor.csv"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor, open(path, "wb") as out:
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)", out)
    upload_csv_file(s3_client(), path, bucket, f"bench/floor-{uuid.uuid4()}.csv")
    return {"wall_seconds": time.perf_counter() - start, "bytes": path.stat().st_size}


def naive(database_url: str, campaign_id: uuid.UUID, bucket: str, workdir: Path) -> dict:
    """Read everything with pandas, DataFrame.to_csv, upload the buffer."""
    import pandas as pd

    from voicesurvey_exports.app_db.contacts import terminal_contacts_query
    from voicesurvey_exports.app_db.engine import get_engine
    from voicesurvey_exports.export_file.csv_format import render_rows

    start = time.perf_counter()
    with get_engine(database_url).connect() as conn:
        rows = pd.read_sql(terminal_contacts_query(campaign_id), conn)
    body = render_rows(rows)
    s3_client().put_object(Bucket=bucket, Key=f"bench/naive-{uuid.uuid4()}.csv", Body=body)
    return {"wall_seconds": time.perf_counter() - start, "bytes": len(body), "rows": len(rows)}


def project(database_url: str, campaign_id: uuid.UUID, bucket: str, workdir: Path) -> dict:
    """The asset's own ops, invoked directly: extract, render, upload."""
    import dagster as dg
    from dagster_aws.s3 import S3Resource

    from voicesurvey_exports.pipeline.assets import (
        ExportTarget,
        extract_terminal_contacts,
        render_csv,
        upload_csv,
    )
    from voicesurvey_exports.pipeline.resources import AppDatabase, ExportDestination
    from voicesurvey_exports.pipeline.spool import SpoolStorage

    app_db = AppDatabase(database_url=database_url)
    spool = SpoolStorage(base_dir=str(workdir))
    target = ExportTarget(uuid.uuid4(), campaign_id, "bench", None)
    context = dg.build_op_context()
    start = time.perf_counter()
    extracted = extract_terminal_contacts(context, app_db=app_db, spool=spool, target=target)
    extracted_at = time.perf_counter()
    rendered = render_csv(context, extracted)
    rendered_at = time.perf_counter()
    upload_csv(
        context,
        s3=S3Resource(region_name=os.environ.get("AWS_REGION", "eu-central-1")),
        destination=ExportDestination(bucket=bucket, prefix="bench/"),
        target=target,
        rendered=rendered,
    )
    end = time.perf_counter()
    spool.remove(context.run_id)
    return {
        "wall_seconds": end - start,
        "bytes": rendered.byte_count,
        "rows": rendered.row_count,
        "op_seconds": {
            "extract_terminal_contacts": round(extracted_at - start, 3),
            "render_csv": round(rendered_at - extracted_at, 3),
            "upload_csv": round(end - rendered_at, 3),
        },
    }


PATHS = {"floor": floor, "naive": naive, "project": project}


def main() -> None:
    path_name, database_url, campaign_id, bucket = sys.argv[1:5]
    with tempfile.TemporaryDirectory(prefix="vse-bench-") as workdir:
        result = PATHS[path_name](database_url, uuid.UUID(campaign_id), bucket, Path(workdir))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
