"""Create or upgrade the app schema, idempotently, tracking the applied version.

The app owns V0001 (its tables) and V0002 (export_jobs); this project ships them
so that it can run and be tested alone. Tables that already exist (created by the
app itself) are left alone and their version is recorded. V0003 adds a column to
export_jobs when it is missing.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.schema import CreateColumn

from .engine import is_postgres
from .schema import MIGRATIONS, metadata

_version_metadata = MetaData()
schema_migrations = Table(
    "app_schema_migrations",
    _version_metadata,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

LATEST_VERSION = max(MIGRATIONS)
# Arbitrary constant: serialises concurrent `db upgrade` runs on PostgreSQL.
_ADVISORY_LOCK_KEY = 18_0002


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, schema_migrations.name):
            return 0
        return conn.execute(
            select(func.coalesce(func.max(schema_migrations.c.version), 0))
        ).scalar_one()


def upgrade(engine: Engine) -> list[int]:
    """Apply every migration newer than the database's version; return those applied."""
    applied: list[int] = []
    with engine.begin() as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        schema_migrations.create(conn, checkfirst=True)
        done = set(conn.execute(select(schema_migrations.c.version)).scalars())
        for version, (description, tables, columns) in sorted(MIGRATIONS.items()):
            if version in done:
                continue
            for table in tables:
                table.create(conn, checkfirst=True)
            for table_name, column_name in columns:
                _add_column(conn, table_name, column_name)
            conn.execute(
                schema_migrations.insert().values(version=version, description=description)
            )
            applied.append(version)
    return applied


def _add_column(conn, table_name: str, column_name: str) -> None:
    """ALTER TABLE ... ADD COLUMN, as the schema defines the column, unless it is there."""
    if column_name in {column["name"] for column in inspect(conn).get_columns(table_name)}:
        return
    column = metadata.tables[table_name].c[column_name]
    ddl = CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {ddl}"))
