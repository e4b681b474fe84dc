"""export_jobs.size_bytes and export_jobs.sha256: the stored object's size and SHA-256.

Revision ID: V0004
Revises: V0003

A completed job states the bytes a download gets, so that the app and its users can
verify a file. Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "V0004"
down_revision = "V0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns without defaults: plain ALTER TABLE ... ADD COLUMN on both engines.
    with op.batch_alter_table("export_jobs") as batch_op:
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger))
        batch_op.add_column(sa.Column("sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch_op:
        batch_op.drop_column("sha256")
        batch_op.drop_column("size_bytes")
