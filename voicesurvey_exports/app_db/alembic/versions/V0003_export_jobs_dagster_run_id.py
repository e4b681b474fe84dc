"""export_jobs.dagster_run_id: the Dagster run that owns the job now.

Revision ID: V0003
Revises: V0002

Only that run may complete or fail the job, so a stale run or one launched with another
job's tag cannot touch it. Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "V0003"
down_revision = "V0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a plain ALTER TABLE ... ADD COLUMN on both
    # engines (batch mode only recreates the SQLite table when the change needs it).
    with op.batch_alter_table("export_jobs") as batch_op:
        batch_op.add_column(sa.Column("dagster_run_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch_op:
        batch_op.drop_column("dagster_run_id")
