"""Fixtures: a real PostgreSQL database per session, SQLite files, moto S3, app data."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import psycopg2
import pytest
from moto import mock_aws
from sqlalchemy import Engine, text

from dev.local_services import postgres_admin
from dev.private_postgres import private_postgres
from voicesurvey_exports.app_db import schema
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.export_file.s3_object import ExportObjects
from voicesurvey_exports.service.requests import ExportRequests
from voicesurvey_exports.settings import DEFAULTS, Settings

# A job's options as its JSON shows them when the request gave none (every default shown).
DEFAULT_OPTIONS = {
    "bom": False,
    "compression": "none",
    "format": "csv",
    "outcomes": list(schema.TERMINAL_CONTACT_STATES),
    "attempted_from": None,
    "attempted_to": None,
    "time_zone": "UTC",
}

# Plain postgresql:// on purpose: the form operators write (see docs/configuration.md).
# TEST_POSTGRES_URL names the server to use; without it, the local default is tried and,
# when nothing listens there, the session starts a private server (dev/private_postgres).
CONFIGURED_SERVER_URL = os.environ.get("TEST_POSTGRES_URL")
DEFAULT_SERVER_URL = os.environ.get(
    "TEST_POSTGRES_PROBE_URL", "postgresql://postgres@127.0.0.1:5432"
)
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
TEST_BUCKET = "test-exports"
TEST_REGION = "eu-central-1"


@pytest.fixture(autouse=True)
def _unfrozen_heap():
    """Loading the definitions freezes the heap out of the collector's scans (as the
    pipeline's processes want); in this process it would also keep every earlier test's
    garbage, so it is unfrozen after each test."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


def settings_for(database_url: str, **variables: str) -> Settings:
    """Settings as the services read them, for the test bucket and region, plus overrides
    (environment variable names, as an operator writes them)."""
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "S3_BUCKET_NAME": TEST_BUCKET,
            "AWS_REGION": TEST_REGION,
            "EXPORT_URL_EXPIRATION_SECONDS": "600",
            # A request-sensor tick that finds nothing returns at once (the waiting
            # tick has its own test in test_sensors.py).
            "EXPORT_SENSOR_WAIT_SECONDS": "0",
            **variables,
        }
    )


def request_api(engine: Engine, s3_client, **variables: str) -> ExportRequests:
    """The app-side request API on a test database and moto's S3."""
    settings = settings_for(engine.url.render_as_string(hide_password=False), **variables)
    return ExportRequests.from_settings(settings, engine=engine, s3_client=s3_client)


def _no_postgres(message: str):
    if REQUIRE_POSTGRES:
        pytest.fail(f"REQUIRE_POSTGRES=1 but {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    url = CONFIGURED_SERVER_URL or DEFAULT_SERVER_URL
    try:
        postgres_admin(url, "SELECT 1")
    except psycopg2.OperationalError as error:
        unreachable = f"no PostgreSQL server at {url}: {str(error).strip()}"
    else:
        yield url
        return
    # Only when nothing listens: a server that refuses us (auth, a missing role) is a
    # set-up to fix, and REQUIRE_POSTGRES=1 (CI) insists on the machine's own server.
    if CONFIGURED_SERVER_URL or REQUIRE_POSTGRES or "Connection refused" not in unreachable:
        _no_postgres(unreachable)
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(private_postgres())
        except (ImportError, OSError, subprocess.CalledProcessError) as error:
            _no_postgres(f"{unreachable}; a private server did not start either: {error}")
        yield url


@pytest.fixture(scope="session")
def create_postgres_database(postgres_server):
    """Create throwaway databases; all are dropped when the test session ends."""
    created: list[str] = []

    def create(purpose: str) -> str:
        name = f"vse_{purpose}_{uuid.uuid4().hex[:10]}"
        postgres_admin(postgres_server, f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{postgres_server}/{name}"

    yield create
    for name in created:
        postgres_admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def stack_databases(create_postgres_database):
    """For a real-process stack (dev.local_services.local_stack): a migrated app database
    and an empty Dagster instance database, as the settings that name them."""

    def create(purpose: str) -> dict[str, str]:
        app_url = create_postgres_database(f"{purpose}_app")
        upgrade(get_engine(app_url))
        return {
            "DATABASE_URL": app_url,
            "DAGSTER_POSTGRES_URL": create_postgres_database(f"{purpose}_dagster"),
        }

    return create


@pytest.fixture(scope="session")
def migrated_postgres_url(create_postgres_database) -> str:
    url = create_postgres_database("app")
    upgrade(get_engine(url))
    return url


def _empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(schema.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def postgres_url(migrated_postgres_url) -> str:
    _empty_tables(get_engine(migrated_postgres_url))
    return migrated_postgres_url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(get_engine(url))
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request) -> str:
    """The app database on both supported engines."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(database_url) -> Engine:
    return get_engine(database_url)


@pytest.fixture
def aws_credentials(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": TEST_REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3_client(aws_credentials):
    """moto's in-process S3 with the export bucket created."""
    with mock_aws():
        client = boto3.client("s3", region_name=TEST_REGION)
        client.create_bucket(
            Bucket=TEST_BUCKET, CreateBucketConfiguration={"LocationConstraint": TEST_REGION}
        )
        yield client


class AppData:
    """Inserts app rows the way the VoiceSurveyAgent app would."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._clock = datetime(2026, 11, 16, 9, 0, 0, tzinfo=UTC)

    def _insert(self, table, **values) -> uuid.UUID:
        values.setdefault("id", uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(table.insert().values(**values))
        return values["id"]

    def user(self, role: str = "campaign_manager") -> uuid.UUID:
        tag = uuid.uuid4().hex[:8]
        return self._insert(
            schema.users, oidc_subject=f"sub-{tag}", email=f"{tag}@example.com", name=tag, role=role
        )

    def campaign(
        self, name: str = "Spring satisfaction survey", created_by_user_id: uuid.UUID | None = None
    ) -> uuid.UUID:
        return self._insert(
            schema.campaigns, name=name, status="completed", created_by_user_id=created_by_user_id
        )

    def contact(self, campaign_id: uuid.UUID, state: str = "completed", **values) -> uuid.UUID:
        self._clock += timedelta(minutes=7, seconds=13)
        values.setdefault("phone_number", f"+39055{uuid.uuid4().int % 10**7:07d}")
        values.setdefault("email", f"{uuid.uuid4().hex[:6]}@contact.example")
        values.setdefault("attempts_count", 1)
        values.setdefault("last_attempt_at", self._clock)
        return self._insert(schema.contacts, campaign_id=campaign_id, state=state, **values)

    def response(self, contact_id: uuid.UUID, campaign_id: uuid.UUID, *answers: str | None):
        padded = list(answers) + [None] * (3 - len(answers))
        return self._insert(
            schema.survey_responses,
            contact_id=contact_id,
            campaign_id=campaign_id,
            q1_answer=padded[0],
            q2_answer=padded[1],
            q3_answer=padded[2],
            completed_at=self._clock + timedelta(seconds=42),
        )

    def export_job(self, campaign_id: uuid.UUID, user_id: uuid.UUID | None = None, **values):
        # Distinct creation times: SQLite's now() has one-second resolution.
        self._clock += timedelta(seconds=1)
        values.setdefault("created_at", self._clock)
        return self._insert(
            schema.export_jobs, campaign_id=campaign_id, requested_by_user_id=user_id, **values
        )

    def completed_export(
        self,
        campaign_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        *,
        s3_client=None,
        **values,
    ) -> uuid.UUID:
        """A completed export job of the campaign (a new one when None) at the key the
        pipeline would write, with download_url "old" unless given. With s3_client its file
        is in TEST_BUCKET; without, the key names a file that does not exist."""
        campaign_id = campaign_id or self.campaign()
        values.setdefault("id", uuid.uuid4())
        objects = ExportObjects(s3_client, TEST_BUCKET, DEFAULTS["S3_EXPORT_PREFIX"], 600)
        values.setdefault(
            "s3_key", objects.key(campaign_id, values["id"], values.get("compression", "none"))
        )
        values.setdefault("download_url", "old")
        if s3_client is not None:
            s3_client.put_object(Bucket=TEST_BUCKET, Key=values["s3_key"], Body=b"campaign_id\r\n")
        return self.export_job(campaign_id, user_id, status="completed", **values)

    def schedule(self, campaign_id: uuid.UUID, user_id: uuid.UUID, **values) -> uuid.UUID:
        """A recurring export of the campaign (every morning at 6, UTC, unless given)."""
        values.setdefault("cron", "0 6 * * *")
        values.setdefault("time_zone", "UTC")
        values.setdefault("options", {"bom": False, "compression": "none"})
        return self._insert(
            schema.export_schedules, campaign_id=campaign_id, created_by_user_id=user_id, **values
        )

    def job_row(self, job_id: uuid.UUID) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(
                schema.export_jobs.select().where(schema.export_jobs.c.id == job_id)
            ).one()
        return dict(row._mapping)

    def count(self, table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table.name}")).scalar_one()


@pytest.fixture
def app_data(engine) -> AppData:
    return AppData(engine)
