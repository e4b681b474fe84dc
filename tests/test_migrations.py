import pytest
from sqlalchemy import inspect, text

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import LATEST_VERSION, current_version, upgrade

APP_TABLES = {"users", "campaigns", "contacts", "survey_responses", "export_jobs"}


def test_upgrade_creates_every_table_and_is_idempotent(create_postgres_database, tmp_path):
    for url in (create_postgres_database("migrate"), f"sqlite:///{tmp_path / 'fresh.db'}"):
        engine = get_engine(url)
        assert current_version(engine) == 0
        assert upgrade(engine) == [1, 2, 3]
        assert set(inspect(engine).get_table_names()) >= APP_TABLES
        assert upgrade(engine) == []
        assert current_version(engine) == LATEST_VERSION


def test_upgrade_from_v1_adds_only_export_jobs(create_postgres_database):
    engine = get_engine(create_postgres_database("v1"))
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE export_jobs"))
        conn.execute(text("DROP TYPE export_job_status"))
        conn.execute(text("DELETE FROM app_schema_migrations WHERE version = 2"))
    assert upgrade(engine) == [2]
    assert "export_jobs" in inspect(engine).get_table_names()


def test_tables_created_by_the_app_are_kept_and_recorded(create_postgres_database):
    engine = get_engine(create_postgres_database("appowned"))
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (oidc_subject, email, role) VALUES ('s', 'e', 'admin')")
        )
        conn.execute(text("DROP TABLE app_schema_migrations"))
    assert upgrade(engine) == [1, 2, 3]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 1


def test_pending_jobs_index_exists(migrated_postgres_url):
    indexes = inspect(get_engine(migrated_postgres_url)).get_indexes("export_jobs")
    assert any(index["column_names"][:2] == ["status", "created_at"] for index in indexes)


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_upgrade_from_v2_adds_the_run_column_and_keeps_every_job(
    kind, create_postgres_database, tmp_path
):
    url = create_postgres_database("v2") if kind == "postgres" else f"sqlite:///{tmp_path}/v2.db"
    engine = get_engine(url)
    upgrade(engine)
    with engine.begin() as conn:  # a database as V0002 left it, with a job in it
        conn.execute(text("ALTER TABLE export_jobs DROP COLUMN dagster_run_id"))
        conn.execute(text("DELETE FROM app_schema_migrations WHERE version = 3"))
        conn.execute(
            text(
                "INSERT INTO campaigns (id, name, status, language) VALUES "
                "('00000000000000000000000000000001', 'c', 'draft', 'en')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO export_jobs (id, campaign_id, status, s3_key) VALUES "
                "('00000000000000000000000000000002', "
                "'00000000000000000000000000000001', 'completed', 'exports/k.csv')"
            )
        )

    assert upgrade(engine) == [3]

    assert "dagster_run_id" in {c["name"] for c in inspect(engine).get_columns("export_jobs")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status, s3_key FROM export_jobs")).all() == [
            ("completed", "exports/k.csv")
        ]
