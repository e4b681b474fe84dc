import pytest
from sqlalchemy import text

from voicesurvey_exports.app_db.engine import DatabaseUrlError, get_engine, sync_database_url


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
