"""export_jobs: one row per requested export, with the index the request sensor polls.

Revision ID: V0002
Revises: V0001

Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "V0002"
down_revision = "V0001"
branch_labels = None
depends_on = None

EXPORT_JOB_STATUSES = ("pending", "running", "completed", "failed")


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("campaign_id", sa.Uuid, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("requested_by_user_id", sa.Uuid, sa.ForeignKey("users.id")),
        sa.Column(
            "status",
            sa.Enum(*EXPORT_JOB_STATUSES, name="export_job_status"),
            nullable=False,
            server_default="pending",
        ),
        sa.Column("s3_key", sa.String(500)),
        sa.Column("download_url", sa.Text),
        sa.Column("url_expires_at", sa.DateTime(timezone=True)),
        sa.Column("error_message", sa.Text),
        sa.Column("total_records", sa.Integer),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
    )
    # The sensor asks for "pending jobs, oldest first" every few seconds.
    op.create_index(
        "ix_export_jobs_status_created_at", "export_jobs", ["status", "created_at", "id"]
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE export_jobs ALTER COLUMN id SET DEFAULT gen_random_uuid()")


def downgrade() -> None:
    op.drop_index("ix_export_jobs_status_created_at", table_name="export_jobs")
    op.drop_table("export_jobs")
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TYPE IF EXISTS export_job_status")
