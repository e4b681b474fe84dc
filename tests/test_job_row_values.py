"""Export job rows written by SQL, as the app writes them, not through this project.

Whatever a row holds, either the database refuses it at the INSERT (revision V0006's
rules), or the service shows it (200) and the pipeline handles it: a value this release
does not know (a database without the rules) fails its job at once, naming column and
value, with no retries.
"""

import uuid

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.app_db.schema import (
    COMPRESSIONS,
    EXPORT_JOB_STATUSES,
    export_jobs,
    export_notifications,
)
from voicesurvey_exports.pipeline.sensors import build_export_requests_sensor
from voicesurvey_exports.service.http.app import create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier

from .conftest import DEFAULT_OPTIONS, TEST_BUCKET, AppData, request_api, settings_for
from .dagster_harness import export_resources, materialize_export, run_failure_sensor
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token

UNKNOWN_GZIP = "export_jobs.compression is 'GZIP', not one of: none, gzip"


def service(engine: Engine, s3_client) -> TestClient:
    app = create_app(
        request_api(engine, s3_client),
        TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET)),
    )
    # A 500 is an answer to assert on, not an exception in the test.
    return TestClient(app, raise_server_exceptions=False)


def bearer(data: AppData) -> dict:
    manager = data.user("campaign_manager")
    return {"Authorization": f"Bearer {token(oidc_subject(data, manager))}"}


def sql_id(engine: Engine, value: uuid.UUID) -> str:
    # How each engine stores a uuid: SQLite as 32 hex digits (SQLAlchemy's Uuid there).
    return value.hex if engine.dialect.name == "sqlite" else str(value)


def insert_by_sql(engine: Engine, campaign: uuid.UUID, *, checked=True, **values) -> uuid.UUID:
    """INSERT one export_jobs row with plain SQL and raw parameters, as the app does.
    checked=False on SQLite writes it past the CHECK rules (PRAGMA ignore_check_constraints)."""
    job_id = uuid.uuid4()
    values = {"id": sql_id(engine, job_id), "campaign_id": sql_id(engine, campaign), **values}
    with engine.connect() as conn:
        if not checked:
            conn.execute(text("PRAGMA ignore_check_constraints = ON"))
        try:
            conn.execute(
                text(
                    f"INSERT INTO export_jobs ({', '.join(values)}) VALUES (:{', :'.join(values)})"
                ),
                values,
            )
            conn.commit()
        finally:
            if not checked:
                conn.execute(text("PRAGMA ignore_check_constraints = OFF"))
    return job_id


def no_nul(max_size: int) -> st.SearchStrategy[str]:
    # Text a client can send: UTF-8 (no lone surrogates, which no driver encodes), no NUL.
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=max_size)


def known_or_any(known, anything):
    return st.one_of(st.sampled_from(known), anything)


# Any value a row may be written with: the known ones often, anything of the column's
# kind (and some of other kinds) too.
ROW_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "status": known_or_any(EXPORT_JOB_STATUSES, no_nul(9)),
        "compression": known_or_any(COMPRESSIONS, no_nul(16)),
        "bom": st.one_of(st.booleans(), st.integers(-3, 3), no_nul(3)),
        "progress_percent": st.one_of(st.none(), st.integers(-200, 200)),
        "total_records": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        "size_bytes": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "s3_bucket": st.one_of(st.none(), no_nul(63)),
        "s3_key": st.one_of(st.none(), no_nul(500)),
        "error_message": st.one_of(st.none(), no_nul(200)),
        "sha256": st.one_of(st.none(), no_nul(64)),
        "dagster_run_id": st.one_of(st.none(), no_nul(64)),
    },
)


@pytest.fixture
def served(engine, s3_client):
    data = AppData(engine)
    with dg.instance_for_test() as instance:
        yield data, data.campaign(), service(engine, s3_client), bearer(data), instance


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=ROW_VALUES)
def test_a_row_written_by_sql_is_refused_or_shown_and_exported_or_failed_naming_its_value(
    served, database_url, values
):
    data, campaign, client, headers, instance = served
    try:
        job_id = insert_by_sql(data.engine, campaign, **values)
    except DBAPIError:
        return  # the database refused the row: nobody ever sees it
    try:
        shown = client.get(f"/api/exports/{job_id}", headers=headers)
        listed = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
        assert (shown.status_code, listed.status_code) == (200, 200), shown.text
        row = data.job_row(job_id)
        assert shown.json()["options"] == {
            **DEFAULT_OPTIONS,
            "bom": row["bom"],
            "compression": row["compression"],
        }
        assert shown.json()["progress_percent"] == row["progress_percent"]
        if row["status"] == "pending":
            result = build_export_requests_sensor(settings_for(database_url))(
                dg.build_sensor_context(
                    instance=instance,
                    resources={"app_db": export_resources(database_url)["app_db"]},
                )
            )
            launched = {request.run_key for request in result.run_requests}
            after = data.job_row(job_id)
            assert (str(job_id) in launched) == (after["status"] == "pending")
            if after["status"] == "failed":  # only for a value this release does not know
                assert after["error_message"].startswith("export_jobs.compression is ")
                assert repr(row["compression"]) in after["error_message"]
    finally:
        with data.engine.begin() as conn:
            conn.execute(export_notifications.delete())
            conn.execute(export_jobs.delete())


# Values the service does not know, per column (status and bom: PostgreSQL's types refuse
# them before any rule; SQLite needs the rules).
UNKNOWN_VALUES = {
    "compression": no_nul(16).filter(lambda value: value not in COMPRESSIONS),
    "progress_percent": st.one_of(st.integers(-32768, -1), st.integers(101, 32767)),
    "total_records": st.integers(-(2**31), -1),
    "size_bytes": st.integers(-(2**63), -1),
    "s3_bucket": st.just(""),
    "status": no_nul(9).filter(lambda value: value not in EXPORT_JOB_STATUSES),
    # (SQLite stores at most 64-bit integers.)
    "bom": st.one_of(
        st.integers(-(2**63), 2**63 - 1).filter(lambda value: value not in (0, 1)),
        no_nul(3).filter(lambda value: not reads_as_0_or_1(value) and not reads_as_bool(value)),
    ),
}


def reads_as_bool(text: str) -> bool:
    """Whether PostgreSQL's boolean input reads this text as true or false ("t", " yes",
    "of", "1"): it stores a boolean the service knows, so no rule need refuse it."""
    word = text.strip(" \t\n\r\f\v").lower()
    if word in ("1", "0"):
        return True
    return bool(word) and any(
        full.startswith(word) and len(word) >= shortest
        for full, shortest in (
            ("true", 1),
            ("false", 1),
            ("yes", 1),
            ("no", 1),
            ("on", 2),
            ("off", 2),
        )
    )


def reads_as_0_or_1(text: str) -> bool:
    """Whether SQLite's numeric affinity stores this text as 0 or 1 (" 1", "1.0", "0e0"):
    a value the bom rule rightly admits."""
    try:
        return float(text.strip()) in (0.0, 1.0)
    except ValueError:
        return False


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    column_and_value=st.sampled_from(sorted(UNKNOWN_VALUES)).flatmap(
        lambda column: st.tuples(st.just(column), UNKNOWN_VALUES[column])
    )
)
def test_the_database_refuses_every_value_the_service_does_not_know(
    engine, app_data, column_and_value
):
    column, value = column_and_value
    campaign = app_data.campaign()
    with pytest.raises(DBAPIError):
        insert_by_sql(engine, campaign, **{column: value})
    assert app_data.count(export_jobs) == 0


@pytest.fixture(params=["postgres", "sqlite"])
def without_rules(request, tmp_path):
    """A database whose export_jobs lacks the compression rule (a database an operator
    changed, or tables made without the revisions), and a writer for such rows."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'norules.db'}"
        upgrade(get_engine(url))
        return url, lambda engine, campaign, **values: insert_by_sql(
            engine, campaign, checked=False, **values
        )
    url = request.getfixturevalue("create_postgres_database")("norules")
    upgrade(get_engine(url))
    with get_engine(url).begin() as conn:
        conn.execute(text("ALTER TABLE export_jobs DROP CONSTRAINT ck_export_jobs_compression"))
    return url, insert_by_sql


def test_a_pending_job_with_an_unknown_compression_is_failed_by_the_sensor_naming_it(
    without_rules, s3_client
):
    url, write = without_rules
    engine = get_engine(url)
    data = AppData(engine)
    campaign = data.campaign()
    good = data.export_job(campaign, status="pending")
    unknown = write(engine, campaign, status="pending", compression="GZIP")
    client, headers = service(engine, s3_client), bearer(data)
    before = client.get(f"/api/exports/{unknown}", headers=headers)
    assert before.status_code == 200
    assert before.json()["options"] == {**DEFAULT_OPTIONS, "compression": "GZIP"}

    with dg.instance_for_test() as instance:
        result = build_export_requests_sensor(settings_for(url))(
            dg.build_sensor_context(
                instance=instance, resources={"app_db": export_resources(url)["app_db"]}
            )
        )

    assert [request.run_key for request in result.run_requests] == [str(good)]
    job = data.job_row(unknown)
    assert (job["status"], job["error_message"]) == ("failed", UNKNOWN_GZIP)
    shown = client.get(f"/api/exports/{unknown}", headers=headers)
    listed = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
    assert (shown.status_code, listed.status_code) == (200, 200)
    assert (shown.json()["status"], shown.json()["error_message"]) == ("failed", UNKNOWN_GZIP)


def test_a_run_for_a_job_with_an_unknown_compression_fails_at_once_without_retries(
    without_rules, s3_client
):
    url, write = without_rules
    engine = get_engine(url)
    data = AppData(engine)
    campaign = data.campaign()
    data.contact(campaign, "completed")
    # Handed to Dagster, then changed by SQL (or a run launched for it by hand).
    job_id = write(engine, campaign, status="pending", compression="GZIP")

    with dg.instance_for_test() as instance:
        result = materialize_export(instance, url, campaign, job_id)
        assert not result.success
        retried = [
            event
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
        ]
        assert retried == []
        run_failure_sensor(instance, result, url)

    job = data.job_row(job_id)
    assert (job["status"], job["error_message"]) == (
        "failed",
        f"export job {job_id}: {UNKNOWN_GZIP}",
    )
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("KeyCount") == 0
