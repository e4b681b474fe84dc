"""Export options, progress, cancel and completion notifications (issue 14).

Revision ID: V0005
Revises: V0004

- export_jobs.bom and export_jobs.compression: the request's file options.
- export_jobs.progress_percent: how far a running export is (NULL while pending).
- export_jobs.cancel_requested_at: a user asked to cancel the running export.
- export_job_status gains 'cancelled'.
- export_notifications: the outbox of completion webhooks, one row per job and terminal
  state, written in the transaction that ends the job, delivered (and retried) from there.

The downgrade refuses while a job has file options other than the defaults (issue 22):
V0004 has no column for them, and a gzip job would read as a plain CSV at a .csv.gz key.

Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from voicesurvey_exports.app_db.errors import MigrationRefused

revision = "V0005"
down_revision = "V0004"
branch_labels = None
depends_on = None

OLD_STATUSES = ("pending", "running", "completed", "failed")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        # Allowed in a transaction since PostgreSQL 12 (the value is not used before commit).
        op.execute("ALTER TYPE export_job_status ADD VALUE IF NOT EXISTS 'cancelled'")
    # (SQLite stores the enum as plain text: nothing to change there.)
    with op.batch_alter_table("export_jobs") as batch_op:
        batch_op.add_column(sa.Column("bom", sa.Boolean, nullable=False, server_default=sa.false()))
        batch_op.add_column(
            sa.Column("compression", sa.String(16), nullable=False, server_default="none")
        )
        batch_op.add_column(sa.Column("progress_percent", sa.SmallInteger))
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.create_table(
        "export_notifications",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("export_job_id", sa.Uuid, sa.ForeignKey("export_jobs.id"), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("abandoned_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("export_job_id", "event", name="uq_export_notifications_job_event"),
    )
    # Open rows only: the sender's query, every 2 s, never walks the delivered history.
    open_rows = sa.text("delivered_at IS NULL AND abandoned_at IS NULL")
    op.create_index(
        "ix_export_notifications_open",
        "export_notifications",
        ["created_at", "id"],
        postgresql_where=open_rows,
        sqlite_where=open_rows,
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE export_notifications ALTER COLUMN id SET DEFAULT gen_random_uuid()")


def downgrade() -> None:
    with_options = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM export_jobs WHERE bom OR compression <> 'none'"))
        .scalar_one()
    )
    if with_options:
        raise MigrationRefused(
            f"cannot downgrade below V0005: {with_options} export jobs have file options "
            "(bom, gzip) that V0004 cannot record (a gzip job would read as a plain CSV at "
            "a .csv.gz key); delete those jobs first if losing them is acceptable"
        )
    op.drop_index("ix_export_notifications_open", table_name="export_notifications")
    op.drop_table("export_notifications")
    with op.batch_alter_table("export_jobs") as batch_op:
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("progress_percent")
        batch_op.drop_column("compression")
        batch_op.drop_column("bom")
    # A cancelled job reads as failed in the older release, which knows no 'cancelled'.
    op.execute("UPDATE export_jobs SET status = 'failed' WHERE status = 'cancelled'")
    if op.get_context().dialect.name == "postgresql":
        # PostgreSQL cannot drop an enum value: rebuild the type without it.
        op.execute("ALTER TABLE export_jobs ALTER COLUMN status DROP DEFAULT")
        op.execute("ALTER TYPE export_job_status RENAME TO export_job_status_v0005")
        values = ", ".join(f"'{value}'" for value in OLD_STATUSES)
        op.execute(f"CREATE TYPE export_job_status AS ENUM ({values})")
        op.execute(
            "ALTER TABLE export_jobs ALTER COLUMN status TYPE export_job_status "
            "USING status::text::export_job_status"
        )
        op.execute("ALTER TABLE export_jobs ALTER COLUMN status SET DEFAULT 'pending'")
        op.execute("DROP TYPE export_job_status_v0005")
