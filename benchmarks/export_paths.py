"""One export path, run in its own process so that its peak RSS is its own.

    python benchmarks/export_paths.py {floor,naive,project,jsonl,parquet,xlsx} \
        DATABASE_URL CAMPAIGN_ID BUCKET

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
    from voicesurvey_exports.export_file.s3_object import ExportObjects

    sql = terminal_contacts_query(campaign_id).compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    dsn = sync_database_url(database_url).replace("postgresql+psycopg2", "postgresql")
    start = time.perf_counter()
    path = workdir / "floor.csv"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor, open(path, "wb") as out:
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)", out)
    copied = time.perf_counter()
    ExportObjects(s3_client(), bucket, "bench/", url_ttl_seconds=3600).upload(
        path, f"bench/floor-{uuid.uuid4()}.csv"
    )
    end = time.perf_counter()
    return {
        "wall_seconds": end - start,
        "bytes": path.stat().st_size,
        "copy_seconds": round(copied - start, 3),
        "upload_seconds": round(end - copied, 3),
    }


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


def project(
    database_url: str, campaign_id: uuid.UUID, bucket: str, workdir: Path, file_format="csv"
) -> dict:
    """The asset's own steps, without Dagster around them: extract, render, upload."""
    from voicesurvey_exports.app_db.contacts import copy_terminal_contacts
    from voicesurvey_exports.app_db.engine import get_engine
    from voicesurvey_exports.export_file.file_formats import render_spool_as
    from voicesurvey_exports.export_file.s3_object import ExportObjects

    engine = get_engine(database_url)
    objects = ExportObjects(s3_client(), bucket, "bench/", url_ttl_seconds=3600)
    spool_path, csv_path = workdir / "contacts.spool.csv", workdir / f"export.{file_format}"
    start = time.perf_counter()
    with open(spool_path, "wb") as spool:
        copy_terminal_contacts(engine, campaign_id, spool)
    extracted_at = time.perf_counter()
    stats = render_spool_as(file_format, spool_path, csv_path)
    rendered_at = time.perf_counter()
    objects.upload(csv_path, objects.key(campaign_id, uuid.uuid4(), file_format=file_format))
    end = time.perf_counter()
    return {
        "wall_seconds": end - start,
        "bytes": stats.byte_count,
        "rows": stats.row_count,
        "op_seconds": {
            "extract_terminal_contacts": round(extracted_at - start, 3),
            "render_csv": round(rendered_at - extracted_at, 3),
            "upload_csv": round(end - rendered_at, 3),
        },
    }


def in_format(file_format: str):
    def export(database_url, campaign_id, bucket, workdir) -> dict:
        return project(database_url, campaign_id, bucket, workdir, file_format)

    return export


PATHS = {
    "floor": floor,
    "naive": naive,
    "project": project,
    **{name: in_format(name) for name in ("jsonl", "parquet", "xlsx")},
}


def main() -> None:
    path_name, database_url, campaign_id, bucket = sys.argv[1:5]
    with tempfile.TemporaryDirectory(prefix="vse-bench-") as workdir:
        result = PATHS[path_name](database_url, uuid.UUID(campaign_id), bucket, Path(workdir))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
