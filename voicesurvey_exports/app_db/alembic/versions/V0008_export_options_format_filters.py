"""Export formats, outcome and date filters, time zones (issue 25).

Revision ID: V0008
Revises: V0007

- export_jobs.format: csv (the default, as before), jsonl, parquet or xlsx.
- export_jobs.outcomes: the terminal states the file keeps, comma-separated (NULL: all).
- export_jobs.attempted_from / attempted_to: the window [from, to) on
  contacts.last_attempt_at (NULL: unbounded on that side).
- export_jobs.time_zone: the IANA zone the file's text timestamps are written in.
- CHECK rules as V0006's: the format is known, parquet and xlsx have neither gzip nor a
  BOM, outcomes is not empty, from < to, time_zone is not empty.

Existing rows get the defaults, which every rule admits. The downgrade refuses while a
job has any of these options set otherwise: the older release would export it as a plain
CSV of everything in UTC.

Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

from voicesurvey_exports.app_db.errors import MigrationRefused

revision = "V0008"
down_revision = "V0007"
branch_labels = None
depends_on = None

RULES = {
    "ck_export_jobs_format": "format IN ('csv', 'jsonl', 'parquet', 'xlsx')",
    "ck_export_jobs_format_envelope": "format IN ('csv', 'jsonl') "
    "OR (compression = 'none' AND NOT bom)",
    "ck_export_jobs_outcomes": "outcomes <> ''",
    "ck_export_jobs_attempted_window": "attempted_from < attempted_to",
    "ck_export_jobs_time_zone": "time_zone <> ''",
}


def _columns() -> list[sa.Column]:
    return [
        sa.Column("format", sa.String(16), nullable=False, server_default="csv"),
        sa.Column("outcomes", sa.Text),
        sa.Column("attempted_from", sa.DateTime(timezone=True)),
        sa.Column("attempted_to", sa.DateTime(timezone=True)),
        sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"),
    ]


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        with _rebuilt_export_jobs() as batch_op:
            for column in _columns():
                batch_op.add_column(column)
            for name, condition in RULES.items():
                batch_op.create_check_constraint(name, sa.text(condition))
        return
    for column in _columns():
        op.add_column("export_jobs", column)
    for name, condition in RULES.items():
        op.create_check_constraint(name, "export_jobs", sa.text(condition))


@contextlib.contextmanager
def _rebuilt_export_jobs() -> Iterator:
    """SQLite cannot add a constraint: batch mode copies export_jobs to a new table, with
    export_notifications' rows set aside meanwhile (as V0006 does, for the same reason)."""
    op.execute("DROP TABLE IF EXISTS temp.v0008_notifications")
    op.execute("CREATE TEMP TABLE v0008_notifications AS SELECT * FROM export_notifications")
    op.execute("DELETE FROM export_notifications")
    with op.batch_alter_table("export_jobs", recreate="always") as batch_op:
        yield batch_op
    op.execute("INSERT INTO export_notifications SELECT * FROM v0008_notifications")
    op.execute("DROP TABLE v0008_notifications")


def downgrade() -> None:
    with_options = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM export_jobs WHERE format <> 'csv' OR outcomes IS NOT NULL "
                "OR attempted_from IS NOT NULL OR attempted_to IS NOT NULL "
                "OR time_zone <> 'UTC'"
            )
        )
        .scalar_one()
    )
    if with_options:
        raise MigrationRefused(
            f"cannot downgrade below V0008: {with_options} export jobs have a format, filter "
            "or time zone that V0006 cannot record (they would export as a plain CSV of "
            "every contact in UTC); delete those jobs first if losing them is acceptable"
        )
    if op.get_context().dialect.name == "sqlite":
        with _rebuilt_export_jobs() as batch_op:
            for name in RULES:
                batch_op.drop_constraint(name, type_="check")
            for column in reversed(_columns()):
                batch_op.drop_column(column.name)
        return
    for name in RULES:
        op.drop_constraint(name, "export_jobs", type_="check")
    for column in reversed(_columns()):
        op.drop_column("export_jobs", column.name)
