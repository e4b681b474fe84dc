"""Lookups on users and campaigns that exports need."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from .schema import campaigns, users
from .times import as_utc


@dataclass(frozen=True)
class Campaign:
    id: uuid.UUID
    name: str
    created_at: datetime


def get_campaign(conn: Connection, campaign_id: uuid.UUID) -> Campaign | None:
    row = conn.execute(
        select(campaigns.c.id, campaigns.c.name, campaigns.c.created_at).where(
            campaigns.c.id == campaign_id
        )
    ).one_or_none()
    return None if row is None else Campaign(row.id, row.name, as_utc(row.created_at))


def all_campaign_ids(conn: Connection) -> set[str]:
    return {str(campaign_id) for campaign_id in conn.execute(select(campaigns.c.id)).scalars()}


def get_user_role(conn: Connection, user_id: uuid.UUID) -> str | None:
    return conn.execute(select(users.c.role).where(users.c.id == user_id)).scalar_one_or_none()
