"""The app schema's Alembic revisions, on PostgreSQL and SQLite.

A fresh upgrade must build what schema.py's Table objects describe (every query uses
them), and a database made by the old runner or by the app itself must be adopted
without losing a row.
"""

import threading
import uuid
from datetime import UTC, datetime

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
from voicesurvey_exports.app_db.errors import MigrationRefused
from voicesurvey_exports.app_db.export_jobs import claim_job, get_job
from voicesurvey_exports.app_db.migrations import (
    LATEST_VERSION,
    SchemaVersionError,
    current_version,
    downgrade,
    upgrade,
)

from .conftest import AppData

ALL_REVISIONS = ["V0001", "V0002", "V0003", "V0004", "V0005", "V0006", "V0007", "V0008", "V0009"]
APP_TABLES = {
    "users",
    "campaigns",
    "contacts",
    "survey_responses",
    "export_schedules",
    "export_jobs",
}
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
    schedule = data.schedule(campaign, manager)
    job = data.export_job(
        campaign, manager, status="pending", schedule_id=schedule, due_at=data._clock
    )
    return {"manager": manager, "campaign": campaign, "contact": contact, "job": job}


@BOTH_ENGINES
def test_fresh_upgrade_builds_what_schema_py_describes(kind, new_database):
    migrated = new_database(kind, "migrated")
    assert current_version(migrated) is None
    assert upgrade(migrated) == ALL_REVISIONS
    assert upgrade(migrated) == []
    assert current_version(migrated) == LATEST_VERSION == "V0009"

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
                "s3_bucket",
                "idempotency_key",
                "format",
                "outcomes",
                "attempted_from",
                "attempted_to",
                "time_zone",
                "schedule_id",
                "due_at",
                "changed_since",
                "snapshot_at",
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
            for name in sorted(APP_TABLES & set(old.tables)):
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
    [
        ((1, 2), ["V0003", "V0004", "V0005", "V0006", "V0007", "V0008", "V0009"]),
        ((1, 2, 3), ["V0004", "V0005", "V0006", "V0007", "V0008", "V0009"]),
    ],
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

    assert current_version(engine) == LATEST_VERSION
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
    assert current_version(engine) == LATEST_VERSION
    assert AppData(engine).job_row(rows["job"])["campaign_id"] == rows["campaign"]


def test_app_tables_at_v0002_without_a_record_get_v0003(new_database):
    engine = new_database("postgres", "appv2")
    upgrade(engine)
    with engine.begin() as conn:  # as if the app had created its tables up to V0002
        conn.execute(text("DROP TABLE voicesurvey_exports_alembic_version"))
        conn.execute(text("ALTER TABLE export_jobs DROP CONSTRAINT ck_export_jobs_total_records"))
        conn.execute(text("ALTER TABLE export_jobs DROP COLUMN dagster_run_id"))
        conn.execute(text("ALTER TABLE export_jobs DROP COLUMN size_bytes, DROP COLUMN sha256"))
        conn.execute(text("DROP TABLE export_notifications"))
        conn.execute(
            text(
                "ALTER TABLE export_jobs DROP COLUMN bom, DROP COLUMN compression, "
                "DROP COLUMN progress_percent, DROP COLUMN cancel_requested_at, "
                "DROP COLUMN s3_bucket, DROP COLUMN idempotency_key, DROP COLUMN schedule_id, "
                "DROP COLUMN format, DROP COLUMN outcomes, DROP COLUMN attempted_from, "
                "DROP COLUMN attempted_to, DROP COLUMN time_zone, "
                "DROP COLUMN due_at, "
                "DROP COLUMN changed_since, DROP COLUMN snapshot_at"
            )
        )
        conn.execute(text("DROP TABLE export_schedules"))
        conn.execute(text("DROP INDEX ix_export_jobs_requester_created_at"))
    assert upgrade(engine) == ["V0003", "V0004", "V0005", "V0006", "V0007", "V0008", "V0009"]
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
    assert current_version(get_engine(url)) == LATEST_VERSION


@BOTH_ENGINES
def test_downgrade_to_base_then_upgrade_rebuilds_the_schema(kind, new_database):
    engine = new_database(kind, "downgrade")
    upgrade(engine)
    fresh = schema_snapshot(engine)

    jobs = schema.export_jobs
    with engine.begin() as conn:  # a cancelled job reads as failed in the older release
        job = AppData(engine).export_job(AppData(engine).campaign())
        conn.execute(jobs.update().where(jobs.c.id == job).values(status="cancelled"))
    assert downgrade(engine, "V0004") == ["V0009", "V0008", "V0007", "V0006", "V0005"]
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


def at_v0005(engine: Engine) -> Engine:
    """A database at revision V0005 (before V0006's rules and bucket column)."""
    upgrade(engine)
    assert downgrade(engine, "V0005") == ["V0009", "V0008", "V0007", "V0006"]
    return engine


def insert_job_by_sql(engine: Engine, campaign: uuid.UUID, **values) -> uuid.UUID:
    """An export_jobs row written by SQL, as the app (or an operator) could write it."""
    job_id = uuid.uuid4()
    values = {"id": job_id.hex if engine.dialect.name == "sqlite" else str(job_id)} | values
    values.setdefault("campaign_id", campaign.hex if engine.dialect.name == "sqlite" else campaign)
    columns = ", ".join(values)
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO export_jobs ({columns}) VALUES (:{', :'.join(values)})"), values
        )
    return job_id


# Values outside each rule of V0006 that a row at V0005 may hold (status and bom: SQLite
# only, PostgreSQL's types refuse them).
BREAKING_V0006 = [
    *(("compression", value) for value in ("GZIP", "", "zip", "none ", "gzip\n")),
    *(("progress_percent", value) for value in (-1, 101, 32767, -32768)),
    *(("total_records", value) for value in (-1, -(2**31))),
    *(("size_bytes", value) for value in (-1, -(2**62))),
]
SQLITE_BREAKING_V0006 = [
    *(("status", value) for value in ("done", "PENDING", "")),
    *(("bom", value) for value in (2, -1, "yes")),
]


def breaking_v0006(kind: str) -> list:
    return BREAKING_V0006 + (SQLITE_BREAKING_V0006 if kind == "sqlite" else [])


@BOTH_ENGINES
@pytest.mark.parametrize("status", ["pending", "running"])
def test_v0006_refuses_while_an_unfinished_job_holds_a_value_its_rules_refuse(
    kind, status, new_database
):
    # One value per rule (each needs a database of its own; the finished-job test below
    # has them all). An unknown status is neither pending nor running: not here.
    first_per_column = {column: value for column, value in reversed(breaking_v0006(kind))}
    for column, value in first_per_column.items():
        if column == "status":
            continue
        engine = at_v0005(new_database(kind, f"unfinished_{status}_{column}"))
        campaign = AppData(engine).campaign()
        job = insert_job_by_sql(engine, campaign, **({"status": status} | {column: value}))

        with pytest.raises(MigrationRefused) as refused:
            upgrade(engine)

        message = str(refused.value)
        assert "\n" not in message
        assert f"export job {job} is {status} with {column} {value!r}" in message
        assert current_version(engine) == "V0005"
        with engine.connect() as conn:
            stored = conn.execute(
                text(f"SELECT status, {column} FROM export_jobs WHERE {column} IS NOT NULL")
            ).one()
        assert tuple(stored) == (status, value)


# V0006's rules, as its docstring states them, and what replaces a value outside them.
V0006_RULES = {
    "compression": ("compression IN ('none', 'gzip')", "none"),
    "progress_percent": ("progress_percent BETWEEN 0 AND 100", None),
    "total_records": ("total_records >= 0", None),
    "size_bytes": ("size_bytes >= 0", None),
    "status": ("status IN ('pending', 'running', 'completed', 'failed', 'cancelled')", "failed"),
    "bom": ("bom IN (0, 1)", 0),
}


@BOTH_ENGINES
def test_v0006_replaces_finished_jobs_values_outside_its_rules_and_says_what_they_were(
    kind, new_database
):
    engine = at_v0005(new_database(kind, "finished"))
    data = AppData(engine)
    campaign = data.campaign()
    jobs = {
        insert_job_by_sql(engine, campaign, **({"status": "failed"} | {column: value})): (
            column,
            value,
        )
        for column, value in breaking_v0006(kind)
    }
    failed_before = "upload_csv failed: ValueError: compression 'GZIP' is not one of"
    reasoned = insert_job_by_sql(
        engine, campaign, status="failed", compression="GZIP", error_message=failed_before
    )
    good = insert_job_by_sql(engine, campaign, status="completed", compression="gzip", bom=True)
    with engine.begin() as conn:  # an announced end: SQLite rebuilds the table it points to
        conn.execute(
            schema.export_notifications.insert().values(
                id=uuid.uuid4(), export_job_id=good, event="export.completed", body="{}"
            )
        )

    assert upgrade(engine) == ["V0006", "V0007", "V0008", "V0009"]

    for job_id, (column, value) in jobs.items():
        rule, replacement = V0006_RULES[column]
        row = data.job_row(job_id)
        assert row[column] == replacement, (column, value)
        assert row["error_message"] == (
            f"(revision V0006 replaced {column} {value!r}, outside the rule {rule}, "
            f"by {replacement!r})"
        )
    assert data.job_row(reasoned)["error_message"] == (
        f"{failed_before} (revision V0006 replaced compression 'GZIP', outside the rule "
        "compression IN ('none', 'gzip'), by 'none')"
    )
    kept = data.job_row(good)
    assert (kept["compression"], kept["bom"], kept["error_message"]) == ("gzip", True, None)
    assert data.count(schema.export_notifications) == 1


@BOTH_ENGINES
def test_downgrade_below_v0005_is_refused_while_a_job_has_file_options(kind, new_database):
    engine = new_database(kind, "options")
    upgrade(engine)
    data = AppData(engine)
    campaign = data.campaign()
    data.export_job(campaign, status="completed")
    for options in ({"compression": "gzip"}, {"bom": True}, {"bom": True, "compression": "gzip"}):
        job = data.export_job(campaign, status="completed", **options)

        with pytest.raises(MigrationRefused) as refused:
            downgrade(engine, "V0004")

        assert str(refused.value).startswith(
            "cannot downgrade below V0005: 1 export jobs have file options (bom, gzip)"
        )
        assert current_version(engine) == LATEST_VERSION
        assert (data.job_row(job)["bom"], data.job_row(job)["compression"]) == (
            options.get("bom", False),
            options.get("compression", "none"),
        )
        with engine.begin() as conn:
            conn.execute(schema.export_jobs.delete().where(schema.export_jobs.c.id == job))
    assert downgrade(engine, "V0004") == ["V0009", "V0008", "V0007", "V0006", "V0005"]
    with engine.connect() as conn:  # the plain job, kept
        assert conn.execute(text("SELECT status FROM export_jobs")).scalars().all() == ["completed"]


@BOTH_ENGINES
def test_downgrade_below_v0006_is_refused_while_a_file_lies_in_another_bucket(
    kind, new_database, monkeypatch
):
    engine = new_database(kind, "buckets")
    upgrade(engine)
    data = AppData(engine)
    data.completed_export(s3_bucket="old-exports")
    data.completed_export()  # recorded before V0006: the configured bucket
    monkeypatch.setenv("S3_BUCKET_NAME", "new-exports")

    with pytest.raises(MigrationRefused, match="lie in bucket 'old-exports' \\(1 jobs\\)"):
        downgrade(engine, "V0005")
    assert current_version(engine) == LATEST_VERSION
    monkeypatch.delenv("S3_BUCKET_NAME")
    with pytest.raises(MigrationRefused, match="not in S3_BUCKET_NAME \\(None\\)"):
        downgrade(engine, "V0005")

    monkeypatch.setenv("S3_BUCKET_NAME", "old-exports")
    assert downgrade(engine, "V0005") == ["V0009", "V0008", "V0007", "V0006"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(s3_key) FROM export_jobs")).scalar_one() == 2


@BOTH_ENGINES
def test_downgrade_below_v0008_is_refused_while_a_job_has_a_format_filter_or_zone(
    kind, new_database
):
    engine = new_database(kind, "formats")
    upgrade(engine)
    data = AppData(engine)
    campaign = data.campaign()
    data.export_job(campaign, status="completed")
    for options in (
        {"format": "parquet"},
        {"outcomes": "refused"},
        {"attempted_to": datetime(2026, 11, 16, tzinfo=UTC)},
        {"time_zone": "Europe/Rome"},
    ):
        job = data.export_job(campaign, status="completed", **options)

        with pytest.raises(MigrationRefused) as refused:
            downgrade(engine, "V0007")

        assert str(refused.value).startswith(
            "cannot downgrade below V0008: 1 export jobs have a format, filter or time zone"
        )
        assert current_version(engine) == LATEST_VERSION
        with engine.begin() as conn:
            conn.execute(schema.export_jobs.delete().where(schema.export_jobs.c.id == job))
    assert downgrade(engine, "V0007") == ["V0009", "V0008"]
    assert upgrade(engine) == ["V0008", "V0009"]
    with engine.connect() as conn:  # the plain job, kept, with the defaults
        row = conn.execute(text("SELECT status, format, time_zone FROM export_jobs")).one()
    assert tuple(row) == ("completed", "csv", "UTC")
