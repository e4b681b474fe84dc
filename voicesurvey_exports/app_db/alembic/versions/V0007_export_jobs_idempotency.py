"""Idempotency keys of export requests (issue 24).

Revision ID: V0007
Revises: V0006

- export_jobs.idempotency_key: the `Idempotency-Key` the request came with (NULL: none).
- ux_export_jobs_idempotency: unique (requested_by_user_id, idempotency_key) where a key
  is set, so two concurrent requests with the same key record one job. A key older than
  24 hours is cleared from its job when the same user sends it again.
- ix_export_jobs_requester_created_at: (requested_by_user_id, created_at), so that the
  rate limit's count of a user's last minute (app_db/request_rate.py) reads an index
  range, not the whole table.

Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "V0007"
down_revision = "V0006"
branch_labels = None
depends_on = None

INDEX = "ux_export_jobs_idempotency"
WHERE = "idempotency_key IS NOT NULL"
REQUESTER_INDEX = "ix_export_jobs_requester_created_at"


def _in_the_transaction() -> None:
    """pysqlite opens its transaction only at the first write, committing DDL before it
    at once: a write first, so that a later revision's refusal rolls this one back too."""
    if op.get_context().dialect.name == "sqlite":
        op.execute("UPDATE export_jobs SET id = id WHERE 0")


def upgrade() -> None:
    _in_the_transaction()
    op.add_column("export_jobs", sa.Column("idempotency_key", sa.String(255)))
    op.create_index(
        INDEX,
        "export_jobs",
        ["requested_by_user_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )
    op.create_index(REQUESTER_INDEX, "export_jobs", ["requested_by_user_id", "created_at"])


def downgrade() -> None:
    _in_the_transaction()
    op.drop_index(REQUESTER_INDEX, table_name="export_jobs")
    op.drop_index(INDEX, table_name="export_jobs")
    op.drop_column("export_jobs", "idempotency_key")
