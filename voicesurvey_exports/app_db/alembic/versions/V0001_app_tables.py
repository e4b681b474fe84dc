"""The app's tables: users, campaigns, contacts, survey_responses.

Revision ID: V0001
Revises:

The VoiceSurveyAgent app owns these tables; this project ships them so that it can run
and be tested alone. Frozen: later changes go in new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "V0001"
down_revision = None
branch_labels = None
depends_on = None

USER_ROLES = ("admin", "campaign_manager", "viewer")
CAMPAIGN_STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
CONTACT_STATES = ("pending", "in_progress", "completed", "refused", "not_reached", "excluded")
TABLES = ("users", "campaigns", "contacts", "survey_responses")


def _timestamptz(name: str, **kwargs) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)


def _now(name: str) -> sa.Column:
    return _timestamptz(name, nullable=False, server_default=sa.func.now())


def _random_uuid_ids(*tables: str) -> None:
    # Rows inserted by hand or by other tools get an id on PostgreSQL (the app sets its own).
    if op.get_context().dialect.name == "postgresql":
        for table in tables:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT gen_random_uuid()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("oidc_subject", sa.Text, unique=True, nullable=False),
        sa.Column("email", sa.Text, unique=True, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("role", sa.Enum(*USER_ROLES, name="user_role"), nullable=False),
        _now("created_at"),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column(
            "status",
            sa.Enum(*CAMPAIGN_STATUSES, name="campaign_status"),
            nullable=False,
            server_default="draft",
        ),
        sa.Column("language", sa.Text, nullable=False, server_default="en"),
        sa.Column("created_by_user_id", sa.Uuid, sa.ForeignKey("users.id")),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("campaign_id", sa.Uuid, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("external_contact_id", sa.Text),
        sa.Column("phone_number", sa.Text, nullable=False),
        sa.Column("email", sa.Text),
        sa.Column("preferred_language", sa.Text),
        sa.Column("has_prior_consent", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("do_not_call", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "state",
            sa.Enum(*CONTACT_STATES, name="contact_state"),
            nullable=False,
            server_default="pending",
        ),
        sa.Column("attempts_count", sa.Integer, nullable=False, server_default="0"),
        _timestamptz("last_attempt_at"),
        sa.Column("last_outcome", sa.Text),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_contacts_campaign_id_state", "contacts", ["campaign_id", "state"])
    op.create_table(
        "survey_responses",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("contact_id", sa.Uuid, sa.ForeignKey("contacts.id"), nullable=False, unique=True),
        sa.Column("campaign_id", sa.Uuid, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("q1_answer", sa.Text),
        sa.Column("q2_answer", sa.Text),
        sa.Column("q3_answer", sa.Text),
        _now("completed_at"),
    )
    _random_uuid_ids(*TABLES)


def downgrade() -> None:
    op.drop_index("ix_contacts_campaign_id_state", table_name="contacts")
    for table in reversed(TABLES):
        op.drop_table(table)
    if op.get_context().dialect.name == "postgresql":
        for enum_type in ("contact_state", "campaign_status", "user_role"):
            op.execute(f"DROP TYPE IF EXISTS {enum_type}")
