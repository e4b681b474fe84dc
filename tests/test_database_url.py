import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from voicesurvey_exports.app_db.engine import DatabaseUrlError, get_engine, sync_database_url
from voicesurvey_exports.settings import Settings, SettingsError


@pytest.mark.parametrize(
    "app_url",
    [
        "postgresql://u:p@db:5432/app",
        "postgresql+asyncpg://u:p@db:5432/app",
        "postgres://u:p@db:5432/app",
    ],
)
def test_app_postgres_urls_use_the_sync_psycopg2_driver(app_url):
    assert sync_database_url(app_url) == "postgresql+psycopg2://u:p@db:5432/app"


def test_sqlite_urls_are_kept():
    assert sync_database_url("sqlite:////tmp/app.db") == "sqlite:////tmp/app.db"


def test_unsupported_driver_is_a_clear_error():
    with pytest.raises(DatabaseUrlError, match="mysql"):
        sync_database_url("mysql://u@h/db")


def test_unparseable_url_does_not_echo_its_password():
    with pytest.raises(DatabaseUrlError) as error:
        sync_database_url("not a url :// secret@host")
    assert "secret" not in str(error.value)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg"])
def test_plain_and_asyncpg_urls_connect_to_a_real_postgres(migrated_postgres_url, scheme):
    url = migrated_postgres_url.replace("postgresql://", f"{scheme}://", 1)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_asyncpgs_ssl_parameter_becomes_libpqs_sslmode(mode):
    app_url = f"postgresql+asyncpg://u:p@db:5432/app?ssl={mode}&application_name=app"
    assert sync_database_url(app_url) == (
        f"postgresql+psycopg2://u:p@db:5432/app?application_name=app&sslmode={mode}"
    )
    # The same mode given as libpq's own parameter too is no conflict.
    assert sync_database_url(f"{app_url}&sslmode={mode}") == sync_database_url(app_url)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ssl=true", "ssl='true'"),
        ("ssl=false", "ssl='false'"),
        ("ssl=on", "ssl='on'"),
        ("ssl=1", "ssl='1'"),
        ("ssl=Require", "ssl='Require'"),
        ("ssl=require&ssl=disable", "ssl=('require', 'disable')"),
        ("ssl=require&sslmode=disable", "ssl='require' and sslmode='disable'"),
    ],
)
def test_an_ssl_value_without_a_libpq_equivalent_is_refused_in_one_line(query, named):
    url = f"postgresql+asyncpg://u:secret-pw@db:5432/app?{query}"
    rule = (
        "psycopg2 (libpq) takes one TLS mode of disable, allow, prefer, require, verify-ca, "
        "verify-full, given once as ssl= or sslmode="
    )
    with pytest.raises(DatabaseUrlError) as error:
        sync_database_url(url)
    assert str(error.value) == f"DATABASE_URL has {named}: {rule}"
    # Settings refuse it when the code location loads or the CLI starts, not at connect.
    with pytest.raises(SettingsError) as at_load:
        Settings.from_env({"DATABASE_URL": url})
    assert str(at_load.value) == str(error.value) and "secret-pw" not in str(at_load.value)


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_asyncpg_urls_with_ssl_connect_to_a_real_postgres(migrated_postgres_url, mode):
    """The local server has no TLS: disable, allow and prefer connect without it."""
    url = migrated_postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = get_engine(f"{url}?ssl={mode}")
    assert engine.url.query["sslmode"] == mode and "ssl" not in engine.url.query
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_asyncpg_ssl_require_reaches_libpq_as_sslmode(migrated_postgres_url):
    """libpq applies it (the local server has no TLS), instead of refusing `ssl`."""
    url = migrated_postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    with pytest.raises(OperationalError) as error:
        get_engine(f"{url}?ssl=require").connect()
    assert "server does not support SSL" in str(error.value)
    assert 'invalid connection option "ssl"' not in str(error.value)
