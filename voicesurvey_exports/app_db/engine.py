"""Engines for the app database, from the URL as the app writes it."""

from __future__ import annotations

from functools import cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

# The app uses asyncpg; this pipeline is synchronous. Plain postgresql:// is pinned to
# psycopg2 explicitly because SQLAlchemy 2.1 would pick psycopg 3 for it.
_SYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "postgresql+asyncpg": "postgresql+psycopg2",
    "postgresql+psycopg2": "postgresql+psycopg2",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
}


# asyncpg's `ssl` URL parameter takes libpq's sslmode names (asyncpg.connect_utils.SSLMode)
# and means what libpq's `sslmode` means; psycopg2 passes parameters to libpq, which knows
# only `sslmode`. Other values (asyncpg refuses them in a URL too) have no equivalent.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class DatabaseUrlError(ValueError):
    pass


def sync_database_url(database_url: str) -> str:
    """Map ``postgresql+asyncpg://`` and ``postgresql://`` to psycopg2, with asyncpg's
    ``ssl`` parameter as libpq's ``sslmode``; keep SQLite as is."""
    try:
        url = make_url(database_url)
    except Exception:
        raise DatabaseUrlError(
            f"DATABASE_URL={_redact(database_url)!r} is not a database URL "
            "(expected postgresql://... or sqlite:///path)"
        ) from None
    driver = _SYNC_DRIVERS.get(url.drivername)
    if driver is None:
        raise DatabaseUrlError(
            f"DATABASE_URL uses {url.drivername!r}: supported are postgresql://, "
            "postgresql+asyncpg://, postgresql+psycopg2:// and sqlite:///"
        )
    if url.drivername == "postgresql+asyncpg" and "ssl" in url.query:
        url = _sslmode_for_libpq(url)
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _sslmode_for_libpq(url):
    """asyncpg's `?ssl=require` as libpq's `?sslmode=require` (libpq refuses `ssl`)."""
    ssl = url.query["ssl"]
    sslmode = url.query.get("sslmode", ssl)
    if isinstance(ssl, tuple) or ssl not in SSL_MODES or sslmode != ssl:
        given = f"ssl={ssl!r}" + (f" and sslmode={sslmode!r}" if sslmode != ssl else "")
        raise DatabaseUrlError(
            f"DATABASE_URL has {given}: psycopg2 (libpq) takes one TLS mode of "
            f"{', '.join(SSL_MODES)}, given once as ssl= or sslmode="
        )
    return url.difference_update_query(["ssl"]).update_query_dict({"sslmode": ssl})


def _redact(database_url: str) -> str:
    # Keep passwords out of error messages even when the URL does not parse.
    scheme, sep, rest = database_url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return database_url


@cache
def get_engine(database_url: str) -> Engine:
    """One pooled engine per URL and process."""
    url = sync_database_url(database_url)
    # hide_parameters: SQLAlchemy's error text would otherwise carry the bound values
    # (signed download links among them) into logs and Dagster's event log.
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pool_pre_ping: a long-lived run or daemon must survive the database restarting.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the demo's sensor read while a run writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
