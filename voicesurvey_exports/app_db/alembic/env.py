"""Alembic's environment for the app schema.

``voicesurvey_exports.app_db.migrations`` builds the configuration in code and passes
its open connection in ``config.attributes["connection"]``: the migrations then run in
that connection's transaction, after its advisory lock and the adoption of databases
made by the old runner. The stock ``alembic`` command (configured in pyproject.toml,
for ``alembic revision`` and ``alembic history``) gets no connection and falls back to
``DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context

from voicesurvey_exports.app_db.engine import get_engine, sync_database_url
from voicesurvey_exports.app_db.migrations import VERSION_TABLE
from voicesurvey_exports.app_db.schema import metadata

config = context.config


def _configure(**kwargs) -> None:
    context.configure(
        # Only for `alembic revision --autogenerate` / `alembic check`, as a draft to edit:
        # revisions themselves write explicit DDL and never import the live schema.
        target_metadata=metadata,
        # SQLite cannot ALTER most things: batch mode recreates the table when needed.
        render_as_batch=True,
        version_table=VERSION_TABLE,
        on_version_apply=config.attributes.get("on_version_apply"),
        **kwargs,
    )


def _database_url() -> str:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("DATABASE_URL is not set: give the app database URL")
    return database_url


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the DDL for DATABASE_URL's dialect."""
    _configure(url=sync_database_url(_database_url()), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    with get_engine(_database_url()).begin() as own_connection:
        _configure(connection=own_connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
