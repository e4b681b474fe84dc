"""What export_jobs' columns may hold, and the bucket of each job's object (issue 22).

Revision ID: V0006
Revises: V0005

- CHECK constraints on export_jobs: compression is one of the known options,
  progress_percent is 0..100, total_records and size_bytes are not negative, s3_bucket is
  not empty; on SQLite also status and bom (PostgreSQL's enum and boolean types refuse
  anything else already). The app writes these rows by SQL: a value the pipeline and the
  service do not know is now refused at the INSERT.
- export_jobs.s3_bucket: the bucket of s3_key, recorded with it. Rows recorded before
  this revision keep NULL, read as the configured bucket (S3_BUCKET_NAME), as before:
  the bucket those files were written to cannot be known here.

Rows that already break a rule: an unfinished one (pending, running) makes the upgrade
refuse, in one line naming it (the release running now fails such a job at its run;
failing it here would skip its webhook); in a finished one the value is replaced (by the
default, or NULL for a count) and the job's error_message says what it was.

The downgrade refuses while a job's file lies in a bucket other than the S3_BUCKET_NAME
of the environment running it: V0005 has no column to say where it is.

Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

from voicesurvey_exports.app_db.errors import MigrationRefused

revision = "V0006"
down_revision = "V0005"
branch_labels = None
depends_on = None

UNFINISHED = ("pending", "running")
STATUSES = ("pending", "running", "completed", "failed", "cancelled")

# name -> (column, condition, replacement in a finished row)
RULES = {
    "ck_export_jobs_compression": ("compression", "compression IN ('none', 'gzip')", "none"),
    "ck_export_jobs_progress_percent": (
        "progress_percent",
        "progress_percent BETWEEN 0 AND 100",
        None,
    ),
    "ck_export_jobs_total_records": ("total_records", "total_records >= 0", None),
    "ck_export_jobs_size_bytes": ("size_bytes", "size_bytes >= 0", None),
    "ck_export_jobs_s3_bucket": ("s3_bucket", "s3_bucket <> ''", None),
}
SQLITE_RULES = {
    "ck_export_jobs_status": (
        "status",
        "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
        "failed",
    ),
    "ck_export_jobs_bom": ("bom", "bom IN (0, 1)", 0),
}


def _rules(sqlite: bool) -> dict:
    return {**RULES, **SQLITE_RULES} if sqlite else RULES


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    conn = op.get_bind()
    existing = {name: rule for name, rule in _rules(sqlite).items() if rule[0] != "s3_bucket"}
    _refuse_unfinished_rows_breaking(conn, existing)
    _replace_values_breaking(conn, existing)
    if sqlite:
        with _rebuilt_export_jobs() as batch_op:
            batch_op.add_column(sa.Column("s3_bucket", sa.String(63)))
            for name, (_, condition, _) in _rules(sqlite).items():
                batch_op.create_check_constraint(name, sa.text(condition))
        return
    op.add_column("export_jobs", sa.Column("s3_bucket", sa.String(63)))
    for name, (_, condition, _) in RULES.items():
        op.create_check_constraint(name, "export_jobs", sa.text(condition))


@contextlib.contextmanager
def _rebuilt_export_jobs() -> Iterator:
    """SQLite cannot add or drop a constraint: batch mode copies export_jobs to a new table.
    Dropping the old one would break the foreign keys of export_notifications (checked even
    when deferred, and foreign_keys cannot be switched off in a transaction): its rows wait
    in a temporary table meanwhile."""
    # (Left behind on this connection by a run that was rolled back: pysqlite commits DDL
    # that comes before any write.)
    op.execute("DROP TABLE IF EXISTS temp.v0006_notifications")
    op.execute("CREATE TEMP TABLE v0006_notifications AS SELECT * FROM export_notifications")
    op.execute("DELETE FROM export_notifications")
    with op.batch_alter_table("export_jobs", recreate="always") as batch_op:
        yield batch_op
    op.execute("INSERT INTO export_notifications SELECT * FROM v0006_notifications")
    op.execute("DROP TABLE v0006_notifications")


def _refuse_unfinished_rows_breaking(conn, rules: dict) -> None:
    unfinished = ", ".join(f"'{status}'" for status in UNFINISHED)
    for column, condition, _ in rules.values():
        rows = conn.execute(
            sa.text(
                f"SELECT id, status, {column} AS value FROM export_jobs "
                f"WHERE status IN ({unfinished}) AND NOT ({condition}) ORDER BY created_at"
            )
        ).all()
        if rows:
            first = rows[0]
            raise MigrationRefused(
                f"revision V0006 refused: export job {uuid.UUID(str(first.id))} is "
                f"{first.status} with "
                f"{column} {first.value!r}, outside the new rule {condition} ({len(rows)} "
                "unfinished jobs break it): let the running release fail them, or end "
                "them by hand, then upgrade again"
            )


def _replace_values_breaking(conn, rules: dict) -> None:
    for column, condition, replacement in rules.values():
        rows = conn.execute(
            sa.text(f"SELECT id, {column} AS value FROM export_jobs WHERE NOT ({condition})")
        ).all()
        for row in rows:
            note = (
                f"(revision V0006 replaced {column} {row.value!r}, outside the rule "
                f"{condition}, by {replacement!r})"
            )
            conn.execute(
                sa.text(
                    f"UPDATE export_jobs SET {column} = :replacement, error_message = "
                    "CASE WHEN error_message IS NULL THEN :note "
                    "ELSE error_message || ' ' || :note END WHERE id = :id"
                ),
                {"replacement": replacement, "note": note, "id": row.id},
            )


def downgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    _refuse_files_in_other_buckets(op.get_bind())
    if sqlite:
        with _rebuilt_export_jobs() as batch_op:
            for name in _rules(sqlite):
                batch_op.drop_constraint(name, type_="check")
            batch_op.drop_column("s3_bucket")
        return
    for name in RULES:
        op.drop_constraint(name, "export_jobs", type_="check")
    op.drop_column("export_jobs", "s3_bucket")


def _refuse_files_in_other_buckets(conn) -> None:
    """V0005 reads every key in the configured bucket: refuse while a file lies elsewhere."""
    configured = os.environ.get("S3_BUCKET_NAME") or None
    rows = conn.execute(
        sa.text(
            "SELECT s3_bucket, count(*) AS jobs FROM export_jobs WHERE s3_key IS NOT NULL "
            "AND s3_bucket IS NOT NULL AND (:configured IS NULL OR s3_bucket <> :configured) "
            "GROUP BY s3_bucket ORDER BY s3_bucket"
        ),
        {"configured": configured},
    ).all()
    if rows:
        buckets = ", ".join(f"{row.s3_bucket!r} ({row.jobs} jobs)" for row in rows)
        raise MigrationRefused(
            f"cannot downgrade below V0006: export files lie in bucket {buckets}, not in "
            f"S3_BUCKET_NAME ({configured!r}), and V0005 cannot record a job's bucket: run "
            "the downgrade with S3_BUCKET_NAME naming that bucket, or delete those files first"
        )
