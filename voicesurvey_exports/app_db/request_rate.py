"""How many exports a user started in the last minute: the count behind
EXPORT_REQUESTS_PER_MINUTE (docs/operations.md, "Rate limit").

Counted from export_jobs itself, in the transaction that would insert the next one, so
that every service replica and the CLI share one count and a refused request leaves
nothing behind. On PostgreSQL a transaction-scoped advisory lock per user makes two
concurrent requests of the same user count one after the other (under READ COMMITTED
the count after the lock sees what the previous holder committed); other users never
wait. SQLite has one writer at a time: a second writer whose count went stale is refused
("database is locked") rather than let past the limit.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select

from .schema import export_jobs
from .times import as_utc

WINDOW = timedelta(seconds=60)
# The first key of pg_advisory_xact_lock(int, int) for these locks ("vs" in ASCII); the
# two-key space never meets the one-key lock of db upgrade (app_db/migrations.py).
_LOCK_SPACE = 0x7673


@dataclass(frozen=True)
class RecentRequests:
    count: int  # exports the user started within WINDOW before now
    oldest: datetime | None  # when the oldest of them was started
    now: datetime  # the database's time of this transaction

    def retry_after_seconds(self) -> int:
        """Whole seconds until the oldest one leaves the window (at least 1)."""
        if self.oldest is None:
            return 1
        return max(1, math.ceil((self.oldest + WINDOW - self.now).total_seconds()))


def lock_and_count(conn: Connection, user_id: uuid.UUID) -> RecentRequests:
    """Serialise with the user's other requests until this transaction ends, then count
    the exports they started in the last minute (by the database's clock, the one that
    wrote created_at)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_SPACE, func.hashtext(str(user_id)))))
    now = as_utc(conn.execute(select(func.now())).scalar_one())
    count, oldest = conn.execute(
        select(func.count(), func.min(export_jobs.c.created_at)).where(
            export_jobs.c.requested_by_user_id == user_id,
            export_jobs.c.created_at > now - WINDOW,
        )
    ).one()
    return RecentRequests(count=count, oldest=as_utc(oldest), now=now)
