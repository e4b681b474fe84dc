"""schemathesis against the OpenAPI document: no generated request makes the API fail
with a server error, with a campaign manager's token and without one; and, against the
real `serve` process, every Schemathesis check and the documented headers."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, find, settings
from hypothesis.errors import NoSuchExample

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.export_jobs import get_job
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.service.http.app import _cursor_of, create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier

from .conftest import AppData, request_api
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token


@pytest.fixture
def served(postgres_url, s3_client):
    data = AppData(get_engine(postgres_url))
    manager = data.user("campaign_manager")
    data.campaign()
    api = request_api(get_engine(postgres_url), s3_client)
    app = create_app(api, TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET)))
    return app, token(oidc_subject(data, manager))


def fuzz(operation, bearer: str) -> None:
    """Search the operation's generated requests for one that gets a 5xx."""

    def server_error(case) -> bool:
        return any(
            case.call(headers=headers).status_code >= 500
            for headers in ({"Authorization": f"Bearer {bearer}"}, {})
        )

    try:
        failing = find(
            operation.as_strategy(),
            server_error,
            settings=settings(
                max_examples=40,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    except NoSuchExample:
        return
    raise AssertionError(f"{operation.label} answered 5xx to {failing.as_curl_command()}")


def test_no_generated_request_causes_a_server_error(served):
    app, bearer = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10
    for operation in operations:
        fuzz(operation, bearer)


@pytest.fixture
def serve(create_postgres_database, tmp_path):
    """The real `voicesurvey-exports serve`, with a campaign and its manager's token."""
    from .test_http_body_limits import start_server

    database = create_postgres_database("schemathesis")
    upgrade(get_engine(database))
    servers = start_server(database, tmp_path)
    server = next(servers)
    manager = server.app.user("campaign_manager")
    campaign = server.app.campaign()
    jobs = [server.app.export_job(campaign, manager) for _ in range(3)]
    with server.app.engine.connect() as conn:
        oldest = get_job(conn, jobs[0])
    # Known ids and a cursor this service gave, so that generated requests reach past 404.
    known = {"campaign_id": str(campaign), "job_id": str(jobs[-1]), "cursor": _cursor_of(oldest)}
    yield server, token(oidc_subject(server.app, manager), exp=int(time.time()) + 3600), known
    next(servers, None)


def test_schemathesis_with_every_check_passes_against_the_real_service(serve, tmp_path):
    server, bearer, known = serve
    (tmp_path / "schemathesis.toml").write_text(
        "[parameters]\n"
        + "".join(f'"{name}" = "{value}"\n' for name, value in known.items())
        # A cron's grammar, the IANA zone list, a window's from < to and which format takes
        # gzip are not JSON Schema: a schema-valid request may still be 422
        # validation_failed (test_export_options.py and test_schedules.py have those).
        + "".join(
            "[[operations]]\n"
            f'include-operation-id = "{operation}"\n'
            f"checks.positive_data_acceptance.expected-statuses = {statuses}\n"
            for operation, statuses in (
                ("createExportSchedule", "[201, 401, 403, 404, 422]"),
                ("createExport", "[202, 401, 403, 404, 409, 422, 429]"),
                ("createExportViaGet", "[202, 401, 403, 404, 409, 422, 429]"),
            )
        )
    )
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"http://127.0.0.1:{server.port}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {bearer}",
            "--max-examples",
            "30",
            "--seed",
            "24",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_the_real_service_answers_with_the_documented_headers(serve):
    server, bearer, known = serve
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": f"Bearer {bearer}"}
    export = f"{base}/api/campaigns/{known['campaign_id']}/export"
    keyed = {**auth, "Idempotency-Key": "real-http-1"}

    first = requests.post(export, headers=keyed, json={"bom": True}, timeout=10)
    again = requests.post(export, headers=keyed, json={"bom": True}, timeout=10)
    reused = requests.post(export, headers=keyed, json={"bom": False}, timeout=10)
    unauthenticated = requests.get(f"{base}/api/exports/{known['job_id']}", timeout=10)
    options = requests.options(export, timeout=10)
    page = requests.get(
        f"{base}/api/campaigns/{known['campaign_id']}/exports?limit=1", headers=auth, timeout=10
    )

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["Location"] == f"/api/exports/{first.json()['job_id']}"
    assert int(first.headers["Retry-After"]) == 2 + 3 * 3  # three pending jobs ahead
    assert first.headers["Cache-Control"] == page.headers["Cache-Control"] == "no-store"
    assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")
    assert unauthenticated.headers["Content-Type"] == "application/problem+json"
    assert unauthenticated.headers["WWW-Authenticate"] == "Bearer"
    assert (options.status_code, options.headers["Allow"]) == (204, "GET, POST, OPTIONS")
    assert page.links["next"]["url"].startswith(f"{base}/api/campaigns/")
