"""Create or upgrade the app schema with Alembic, idempotently.

The revisions live in ``app_db/alembic/versions`` (V0001 the app's tables, V0002
export_jobs, V0003 export_jobs.dagster_run_id, V0004 export_jobs.size_bytes and sha256,
V0005 export options, progress, cancel and the notifications outbox, V0006 the rules
on export_jobs' values and export_jobs.s3_bucket, ...). The Alembic
configuration is built here in code; every run happens in one transaction on the
caller's engine, under a PostgreSQL advisory lock so that concurrent ``db upgrade`` runs take turns.

Databases made before Alembic are adopted without touching their data: the old runner
recorded versions 1..3 in ``app_schema_migrations``, and the app may have created its
tables itself with no record at all. Such a database (no Alembic version table yet)
is stamped at the revision its tables already match, then upgraded from there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from .engine import is_postgres
from .errors import AppDatabaseError

_SCRIPT_LOCATION = Path(__file__).with_name("alembic")
# Not Alembic's default `alembic_version`: the app (or Dagster's storage, if pointed at
# the same database) may keep its own Alembic history there.
VERSION_TABLE = "voicesurvey_exports_alembic_version"
# Arbitrary constant: serialises concurrent `db upgrade` runs on PostgreSQL.
_ADVISORY_LOCK_KEY = 18_0002

# The old runner's version table and what its versions are as Alembic revisions. The old
# table is left in place after adoption: nothing reads it once the Alembic version table exists,
# it keeps the dates the old runner recorded, and a rollback to a release that still
# uses the old runner finds its versions recorded and changes nothing.
LEGACY_VERSION_TABLE = "app_schema_migrations"
_LEGACY_REVISIONS = {1: "V0001", 2: "V0002", 3: "V0003"}
# What the tables themselves amount to (tables the app made from schema.py may be newer
# than anything the old runner recorded).
_REVISION_OF_LEVEL = {
    **_LEGACY_REVISIONS,
    4: "V0004",
    5: "V0005",
    6: "V0006",
    7: "V0007",
    8: "V0008",
    9: "V0009",
}
_V0001_TABLES = ("users", "campaigns", "contacts", "survey_responses")


class SchemaVersionError(AppDatabaseError):
    """The database's schema cannot be placed in this release's revision history."""


@dataclass(frozen=True)
class UpgradeReport:
    """What one upgrade did: the adoption (if any), the revisions applied, where it ended."""

    version: str | None
    applied: list[str] = field(default_factory=list)
    adopted_at: str | None = None
    adopted_from: str | None = None  # the evidence the adopted revision was read from


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration; migrations run on ``connection`` when one is given."""
    config = Config()
    # configparser interpolation: a literal % in the path must be doubled.
    config.set_main_option("script_location", str(_SCRIPT_LOCATION).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


_SCRIPTS = ScriptDirectory.from_config(alembic_config())
LATEST_VERSION: str = _SCRIPTS.get_current_head()
KNOWN_VERSIONS: tuple[str, ...] = tuple(
    reversed([script.revision for script in _SCRIPTS.walk_revisions()])
)


def current_version(engine: Engine) -> str | None:
    """The revision the schema is at (None when there is no app schema yet).

    A database not yet adopted reports the revision it would be stamped at.
    """
    with engine.connect() as conn:
        if _has_alembic_version(conn):
            return _revision(conn)
        return _adoptable_revision(conn)[0]


def upgrade(engine: Engine) -> list[str]:
    """Apply every revision newer than the database's; return those applied, in order."""
    return upgrade_with_report(engine).applied


def upgrade_with_report(engine: Engine) -> UpgradeReport:
    """Adopt a database made before Alembic if needed, then upgrade it to the head."""
    applied: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        adopted_at = adopted_from = None
        if not _has_alembic_version(conn):
            adopted_at, adopted_from = _adoptable_revision(conn)
        config = _config_recording(conn, applied)
        if adopted_at is None:
            _check_known(conn)
        with _one_line_command_errors():
            if adopted_at is not None:
                command.stamp(config, adopted_at)
            command.upgrade(config, "head")
        version = _revision(conn)
    return UpgradeReport(version, applied, adopted_at, adopted_from)


def downgrade(engine: Engine, revision: str) -> list[str]:
    """Revert to ``revision`` ("base" drops every table); return the revisions reverted."""
    reverted: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        _check_known(conn)
        with _one_line_command_errors():
            command.downgrade(_config_recording(conn, reverted), revision)
    return reverted


def _lock(conn: Connection) -> None:
    # Held until the transaction ends: the second of two concurrent runs waits, then
    # finds the first one's revisions applied and applies nothing.
    if is_postgres(conn.engine):
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})


@contextlib.contextmanager
def _one_line_command_errors() -> Iterator[None]:
    """Alembic's own refusals (an unknown target revision, several heads) in one line."""
    try:
        yield
    except CommandError as error:
        raise SchemaVersionError(f"alembic: {str(error).splitlines()[0]}") from None


def _config_recording(conn: Connection, revisions: list[str]) -> Config:
    """A configuration whose runs append each revision applied or reverted (not stamps)."""

    def record(*, step, **_kwargs) -> None:
        if not step.is_stamp:
            revisions.append(step.up_revision_id)

    config = alembic_config(conn)
    config.attributes["on_version_apply"] = record
    return config


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def _has_alembic_version(conn: Connection) -> bool:
    return inspect(conn).has_table(VERSION_TABLE)


def _check_known(conn: Connection) -> None:
    """Refuse, in one line, a database that a newer release has upgraded past this one."""
    current = _revision(conn)
    if current is None:
        return
    if current not in KNOWN_VERSIONS:
        raise SchemaVersionError(
            f"the app schema is at revision {current!r}, which this release does not know "
            f"(its latest is {LATEST_VERSION}): use a release that ships {current}"
        )


def _adoptable_revision(conn: Connection) -> tuple[str | None, str | None]:
    """The revision a database made without Alembic is at, and the evidence for it.

    (None, None) for a database without app tables: Alembic creates them all. The
    tables are the authority, the old runner's record a cross-check: the old runner
    created tables only when missing, so tables ahead of the record are stamped as they
    are, while a record ahead of the tables means someone changed the schema by hand.
    """
    level = _level_of_tables(conn)
    recorded = _legacy_recorded_version(conn)
    if recorded is not None and recorded not in _LEGACY_REVISIONS:
        raise SchemaVersionError(
            f"{LEGACY_VERSION_TABLE} records version {recorded}, which this release does "
            f"not know (it knows {min(_LEGACY_REVISIONS)}..{max(_LEGACY_REVISIONS)})"
        )
    if recorded is not None and recorded > level:
        raise SchemaVersionError(
            f"{LEGACY_VERSION_TABLE} records version {recorded} but the tables are only at "
            f"version {level}: restore the missing tables or columns before upgrading"
        )
    if level == 0:
        return None, None
    revision = _REVISION_OF_LEVEL[level]
    if recorded is None:
        return revision, "the existing tables (no version record)"
    return revision, f"{LEGACY_VERSION_TABLE} version {recorded}"


def _legacy_recorded_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(LEGACY_VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT max(version) FROM {LEGACY_VERSION_TABLE}")).scalar()


def _level_of_tables(conn: Connection) -> int:
    """Which version (0..9) the app tables present in the database amount to."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    present = [name for name in _V0001_TABLES if name in tables]
    if not present and "export_jobs" not in tables:
        return 0
    missing = [name for name in _V0001_TABLES if name not in tables]
    if missing:
        raise SchemaVersionError(
            f"the database holds some app tables but not {', '.join(missing)}: "
            "cannot tell which revision it is at"
        )
    if "export_jobs" not in tables:
        return 1
    columns = {column["name"] for column in inspector.get_columns("export_jobs")}
    if "schedule_id" in columns and "export_schedules" in tables:
        return 9
    if "time_zone" in columns and "export_notifications" in tables:
        return 8
    if "idempotency_key" in columns and "export_notifications" in tables:
        return 7
    if "s3_bucket" in columns and "export_notifications" in tables:
        return 6
    if "progress_percent" in columns and "export_notifications" in tables:
        return 5
    if "sha256" in columns:
        return 4
    return 3 if "dagster_run_id" in columns else 2
