"""Kept-open connections to Dagster's instance database, in the daemon and each run worker.

dagster-postgres opens a new PostgreSQL connection for every storage call (SQLAlchemy's
NullPool), so that a process which makes many DagsterInstance objects holds no
connections. The daemon ticks its sensors and its queue several times a second and a
run writes about 50 events: connecting was about half of the idle daemon's CPU, and
PostgreSQL forks a backend for each connection. The daemon and a run worker each have
one instance for their whole life, so they keep their connections open as
dagster-webserver does (`DagsterInstance.optimize_for_webserver`: one kept connection
per storage, more while threads need them), without its statement timeout.
"""

from __future__ import annotations

from dagster import DagsterInstance

# A kept connection older than this is replaced at its next use, before a server-side
# or proxy idle timeout can drop it under the daemon.
RECYCLE_SECONDS = 600
# Connections opened beyond the kept one while several threads use a storage at once
# (the daemon's sensor and queue threads); they close when returned.
MAX_OVERFLOW = 10
# No statement timeout, as with Dagster's own (unpooled) connections.
NO_STATEMENT_TIMEOUT = 0


def keep_instance_connections(instance: DagsterInstance) -> None:
    """Pool the instance's storage connections (nothing to do for SQLite storage)."""
    instance.optimize_for_webserver(
        statement_timeout=NO_STATEMENT_TIMEOUT,
        pool_recycle=RECYCLE_SECONDS,
        max_overflow=MAX_OVERFLOW,
    )
