"""The app schema's Alembic revisions, on PostgreSQL and SQLite.

A fresh upgrade must build what schema.py's Table objects describe (every query uses
them), and a database made by the old runner or by the app itself must be adopted
without losing a row.
"""

import threading
import uuid

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import ProgrammingError

from voicesurvey_exports.app_db import schema
from voicesurvey_exports.app_db.engine import get_engine, is_postgres
from voicesurvey_exports.app_db.export_jobs import claim_job, get_job
from voicesurvey_exports.app_db.migrations import (
    LATEST_VERSION,
    SchemaVersionError,
    current_version,
    downgrade,
    upgrade,
)

from .conftest import AppData

ALL_REVISIONS = ["V0001", "V0002", "V0003", "V0004", "V0005"]
APP_TABLES = {"users", "campaigns", "contacts", "survey_responses", "export_jobs"}
BOTH_ENGINES = pytest.mark.parametrize("kind", ["postgres", "sqlite"])


@pytest.fixture
def new_database(request, tmp_path):
    """An empty database of the given kind: a throwaway PostgreSQL database or a file."""

    def create(kind: str, purpose: str) -> Engine:
        if kind == "sqlite":
            return get_engine(f"sqlite:///{tmp_path / purpose}.db")
        return get_engine(request.getfixturevalue("create_postgres_database")(purpose))

    return create


def schema_snapshot(engine: Engine) -> dict:
    """Everything a user of the tables would notice, as inspection reports it."""
    inspector = inspect(engine)
    tables = {}
    for name in sorted(APP_TABLES):
        tables[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c["default"])
                for c in inspector.get_columns(name)
            ],
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"], fk["name"])
                for fk in inspector.get_foreign_keys(name)
            ),
            "indexes": sorted(
                (ix["name"], tuple(ix["column_names"]), ix["unique"])
                for ix in inspector.get_indexes(name)
            ),
            "unique": sorted(
                (uc["name"], tuple(uc["column_names"]))
                for uc in inspector.get_unique_constraints(name)
            ),
            "checks": sorted(
                (ck["name"], ck["sqltext"]) for ck in inspector.get_check_constraints(name)
            ),
        }
    if is_postgres(engine):
        tables["enums"] = sorted((e["name"], tuple(e["labels"])) for e in inspector.get_enums())
    return tables


def one_of_each_row(engine: Engine) -> dict:
    """Write every table through schema.py's Table objects, as the app does."""
    data = AppData(engine)
    manager = data.user("campaign_manager")
    campaign = data.campaign()
    contact = data.contact(campaign)
    data.response(contact, campaign, "yes", "no", "maybe")
    job = data.export_job(campaign, manager, status="pending")
    return {"manager": manager, "campaign": campaign, "contact": contact, "job": job}


@BOTH_ENGINES
def test_fresh_upgrade_builds_what_schema_py_describes(kind, new_database):
    migrated = new_database(kind, "migrated")
    assert current_version(migrated) is None
    assert upgrade(migrated) == ALL_REVISIONS
    assert upgrade(migrated) == []
    assert current_version(migrated) == LATEST_VERSION == "V0005"

    created = new_database(kind, "created")
    schema.metadata.create_all(created)
    assert schema_snapshot(migrated) == schema_snapshot(created)

    rows = one_of_each_row(migrated)
    with migrated.begin() as conn:
        assert claim_job(conn, rows["job"], "run-1", ("pending",)) is not None
        assert get_job(conn, rows["job"]).dagster_run_id == "run-1"
        for table in schema.metadata.sorted_tables:
            if table is schema.export_notifications:  # written when a job ends
                continue
            assert len(conn.execute(select(table)).all()) == 1, table.name
    if is_postgres(migrated):  # rows inserted by other tools get an id
        with migrated.begin() as conn:
            conn.execute(
                text("INSERT INTO users (oidc_subject, email, role) VALUES ('s', 'e', 'admin')")
            )


def old_runner_database(engine: Engine, recorded_versions: tuple[int, ...]) -> MetaData:
    """A database as the pre-Alembic runner made it, recording ``recorded_versions``.

    Version 3 only added export_jobs.dagster_run_id; when it is recorded, the column is
    added the way the old runner did (ALTER TABLE ... ADD COLUMN).
    """
    old = MetaData()
    for table in (schema.users, schema.campaigns, schema.contacts, schema.survey_responses):
        table.to_metadata(old)
    Table(
        "export_jobs",
        old,
        *(  # the old runner's export_jobs: without the columns of V0003 to V0005
            column._copy()
            for column in schema.export_jobs.c
            if column.name
            not in (
                "dagster_run_id",
                "size_bytes",
                "sha256",
                "bom",
                "compression",
                "progress_percent",
                "cancel_requested_at",
            )
        ),
        Index("ix_export_jobs_status_created_at", "status", "created_at", "id"),
    )
    versions = Table(
        "app_schema_migrations",
        old,
        Column("version", Integer, primary_key=True),
        Column("description", Text, nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    with engine.begin() as conn:
        old.create_all(conn)
        if is_postgres(engine):
            for name in APP_TABLES:
                conn.execute(
                    text(f"ALTER TABLE {name} ALTER COLUMN id SET DEFAULT gen_random_uuid()")
                )
        if 3 in recorded_versions:
            conn.execute(text("ALTER TABLE export_jobs ADD COLUMN dagster_run_id VARCHAR(64)"))
        descriptions = {1: "app tables", 2: "export_jobs", 3: "export_jobs.dagster_run_id"}
        conn.execute(
            versions.insert(),
            [{"version": v, "description": descriptions[v]} for v in recorded_versions],
        )
    return old


@BOTH_ENGINES
@pytest.mark.parametrize(
    ("recorded_versions", "expected_applied"),
    [((1, 2), ["V0003", "V0004", "V0005"]), ((1, 2, 3), ["V0004", "V0005"])],
)
def test_old_runner_database_is_adopted_and_keeps_every_row(
    kind, recorded_versions, expected_applied, new_database
):
    engine = new_database(kind, "legacy")
    old_tables = old_runner_database(engine, recorded_versions).tables
    data = AppData(engine)
    manager, campaign = data.user("campaign_manager"), data.campaign("Old campaign")
    contacts = {data.contact(campaign) for _ in range(3)}
    with engine.begin() as conn:  # the job as the old release wrote it: no run column
        job = uuid.uuid4()
        conn.execute(
            old_tables["export_jobs"].insert(),
            {"id": job, "campaign_id": campaign, "requested_by_user_id": manager}
            | {"status": "pending", "s3_key": "exports/old.csv"},
        )
    assert current_version(engine) == f"V000{max(recorded_versions)}"

    assert upgrade(engine) == expected_applied

    assert current_version(engine) == "V0005"
    assert upgrade(engine) == []
    with engine.begin() as conn:
        assert conn.execute(select(schema.users.c.id)).scalars().all() == [manager]
        assert conn.execute(select(schema.campaigns.c.name)).scalars().all() == ["Old campaign"]
        assert set(conn.execute(select(schema.contacts.c.id)).scalars()) == contacts
        old_job = get_job(conn, job)
        assert (old_job.status, old_job.s3_key, old_job.dagster_run_id) == (
            "pending",
            "exports/old.csv",
            None,
        )
        assert claim_job(conn, job, "run-after-upgrade", ("pending",)) is not None
        assert get_job(conn, job).dagster_run_id == "run-after-upgrade"
        # The old record stays as it was (see migrations.py).
        recorded = conn.execute(text("SELECT version FROM app_schema_migrations ORDER BY 1"))
        assert tuple(recorded.scalars()) == recorded_versions


@BOTH_ENGINES
def test_tables_the_app_created_without_a_version_record_are_adopted(kind, new_database):
    engine = new_database(kind, "appowned")
    schema.metadata.create_all(engine)
    rows = one_of_each_row(engine)
    assert upgrade(engine) == []
    assert current_version(engine) == "V0005"
    assert AppData(engine).job_row(rows["job"])["campaign_id"] == rows["campaign"]


def test_app_tables_at_v0002_without_a_record_get_v0003(new_database):
    engine = new_database("postgres", "appv2")
    upgrade(engine)
    with engine.begin() as conn:  # as if the app had created its tables up to V0002
        conn.execute(text("DROP TABLE voicesurvey_exports_alembic_version"))
        conn.execute(text("ALTER TABLE export_jobs DROP COLUMN dagster_run_id"))
        conn.execute(text("ALTER TABLE export_jobs DROP COLUMN size_bytes, DROP COLUMN sha256"))
        conn.execute(text("DROP TABLE export_notifications"))
        conn.execute(
            text(
                "ALTER TABLE export_jobs DROP COLUMN bom, DROP COLUMN compression, "
                "DROP COLUMN progress_percent, DROP COLUMN cancel_requested_at"
            )
        )
    assert upgrade(engine) == ["V0003", "V0004", "V0005"]
    assert "dagster_run_id" in {c["name"] for c in inspect(engine).get_columns("export_jobs")}


def test_a_record_ahead_of_the_tables_is_refused_and_nothing_changes(new_database):
    engine = new_database("postgres", "ahead")
    old_runner_database(engine, (1, 2))
    with engine.begin() as conn:  # claims V0003 but the column is missing
        conn.execute(text("INSERT INTO app_schema_migrations VALUES (3, 'x', now())"))
    with pytest.raises(SchemaVersionError, match="records version 3 but the tables are only at"):
        upgrade(engine)
    assert not inspect(engine).has_table("voicesurvey_exports_alembic_version")


def test_a_database_from_a_newer_release_is_refused(new_database):
    engine = new_database("sqlite", "newer")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE voicesurvey_exports_alembic_version SET version_num = 'V0099'"))
    with pytest.raises(SchemaVersionError, match="at revision 'V0099', which this release"):
        upgrade(engine)


def test_a_failing_revision_leaves_postgres_as_it_was(new_database):
    engine = new_database("postgres", "atomic")
    with engine.begin() as conn:  # V0002's index name, already taken: V0002 fails halfway
        conn.execute(text("CREATE TABLE other (status text, created_at text, id int)"))
        conn.execute(text("CREATE INDEX ix_export_jobs_status_created_at ON other (id)"))
    with pytest.raises(ProgrammingError, match="ix_export_jobs_status_created_at"):
        upgrade(engine)
    assert set(inspect(engine).get_table_names()) == {"other"}
    assert inspect(engine).get_enums() == []


def test_concurrent_upgrades_on_postgres_take_turns(create_postgres_database):
    url = create_postgres_database("concurrent")
    start = threading.Barrier(2)
    results: list = []

    def run() -> None:
        start.wait()
        try:
            results.append(upgrade(get_engine(url)))
        except Exception as error:  # reported below, with the other thread's result
            results.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results, key=len) == [[], ALL_REVISIONS]
    assert current_version(get_engine(url)) == "V0005"


@BOTH_ENGINES
def test_downgrade_to_base_then_upgrade_rebuilds_the_schema(kind, new_database):
    engine = new_database(kind, "downgrade")
    upgrade(engine)
    fresh = schema_snapshot(engine)

    jobs = schema.export_jobs
    with engine.begin() as conn:  # a cancelled job reads as failed in the older release
        job = AppData(engine).export_job(AppData(engine).campaign())
        conn.execute(jobs.update().where(jobs.c.id == job).values(status="cancelled"))
    assert downgrade(engine, "V0004") == ["V0005"]
    assert "progress_percent" not in {c["name"] for c in inspect(engine).get_columns("export_jobs")}
    assert "export_notifications" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job)).scalar_one()
        assert status == "failed"
        conn.execute(text("DELETE FROM export_jobs"))
    assert downgrade(engine, "V0003") == ["V0004"]
    assert "sha256" not in {c["name"] for c in inspect(engine).get_columns("export_jobs")}
    assert downgrade(engine, "V0002") == ["V0003"]
    assert "dagster_run_id" not in {c["name"] for c in inspect(engine).get_columns("export_jobs")}
    assert downgrade(engine, "base") == ["V0002", "V0001"]
    assert not APP_TABLES & set(inspect(engine).get_table_names())
    if is_postgres(engine):
        assert inspect(engine).get_enums() == []
    assert current_version(engine) is None

    assert upgrade(engine) == ALL_REVISIONS
    assert schema_snapshot(engine) == fresh


def test_pending_jobs_index_exists(migrated_postgres_url):
    indexes = inspect(get_engine(migrated_postgres_url)).get_indexes("export_jobs")
    assert any(index["column_names"][:2] == ["status", "created_at"] for index in indexes)
