"""Recurring exports (issue 26): export_schedules, and the deliveries' columns on export_jobs.

Revision ID: V0009
Revises: V0008

- export_schedules: a campaign's recurring export, made by a user: a five-field cron
  expression in an IANA time zone, the export options (JSON, as a request takes them),
  incremental or not, enabled (or disabled, saying why), the latest due time that made
  its job, deleted_at (deleted schedules stay for the jobs that name them).
- export_jobs.schedule_id, due_at: the schedule and due time a delivery is for, unique
  together, so that a due time makes exactly one job however often it is evaluated.
- export_jobs.changed_since, snapshot_at: an incremental delivery's window.

The downgrade refuses while a job names a schedule: the older release would run it as an
ordinary full export, and the schedule would be lost.

Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

from voicesurvey_exports.app_db.errors import MigrationRefused

revision = "V0009"
down_revision = "V0008"
branch_labels = None
depends_on = None

FOREIGN_KEY = "fk_export_jobs_schedule_id"
JOB_COLUMNS = ("schedule_id", "due_at", "changed_since", "snapshot_at")


def _timestamptz(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True))


def upgrade() -> None:
    postgres = op.get_context().dialect.name == "postgresql"
    op.create_table(
        "export_schedules",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("campaign_id", sa.Uuid, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("created_by_user_id", sa.Uuid, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("incremental", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text),
        _timestamptz("last_due_at"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        _timestamptz("deleted_at"),
    )
    if postgres:
        op.execute("ALTER TABLE export_schedules ALTER COLUMN id SET DEFAULT gen_random_uuid()")
        op.add_column("export_jobs", sa.Column("schedule_id", sa.Uuid))
        for name in JOB_COLUMNS[1:]:
            op.add_column("export_jobs", _timestamptz(name))
        op.create_foreign_key(
            FOREIGN_KEY, "export_jobs", "export_schedules", ["schedule_id"], ["id"]
        )
        op.create_unique_constraint(
            "uq_export_jobs_schedule_due_at", "export_jobs", ["schedule_id", "due_at"]
        )
        return
    with _rebuilt_export_jobs() as batch_op:
        batch_op.add_column(sa.Column("schedule_id", sa.Uuid))
        for name in JOB_COLUMNS[1:]:
            batch_op.add_column(_timestamptz(name))
        batch_op.create_foreign_key(FOREIGN_KEY, "export_schedules", ["schedule_id"], ["id"])
        batch_op.create_unique_constraint(
            "uq_export_jobs_schedule_due_at", ["schedule_id", "due_at"]
        )


@contextlib.contextmanager
def _rebuilt_export_jobs() -> Iterator:
    """SQLite cannot add a constraint: batch mode copies export_jobs to a new table, and
    export_notifications' rows wait in a temporary table meanwhile (as in V0006)."""
    op.execute("DROP TABLE IF EXISTS temp.v0009_notifications")
    op.execute("CREATE TEMP TABLE v0009_notifications AS SELECT * FROM export_notifications")
    op.execute("DELETE FROM export_notifications")
    with op.batch_alter_table("export_jobs", recreate="always") as batch_op:
        yield batch_op
    op.execute("INSERT INTO export_notifications SELECT * FROM v0009_notifications")
    op.execute("DROP TABLE v0009_notifications")


def downgrade() -> None:
    conn = op.get_bind()
    scheduled = conn.execute(
        sa.text("SELECT count(*) FROM export_jobs WHERE schedule_id IS NOT NULL")
    ).scalar_one()
    if scheduled:
        raise MigrationRefused(
            f"cannot downgrade below V0009: {scheduled} export jobs are deliveries of a "
            "recurring export, which the older release cannot record; delete those jobs first"
        )
    if op.get_context().dialect.name == "postgresql":
        op.drop_constraint("uq_export_jobs_schedule_due_at", "export_jobs", type_="unique")
        op.drop_constraint(FOREIGN_KEY, "export_jobs", type_="foreignkey")
        for name in JOB_COLUMNS:
            op.drop_column("export_jobs", name)
    else:
        with _rebuilt_export_jobs() as batch_op:
            batch_op.drop_constraint("uq_export_jobs_schedule_due_at", type_="unique")
            for name in JOB_COLUMNS:
                batch_op.drop_column(name)
    op.drop_table("export_schedules")
