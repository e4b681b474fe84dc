"""What operators watch the service by: /healthz, /readyz against a database that answers
and one that does not, /metrics (export gauges from the database, request counts by route
template, latency), the request id on answers and log lines, and LOG_FORMAT=json from the
real `serve` process."""

import io
import json
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from dev import local_services, process_group
from dev.local_services import postgres_admin
from voicesurvey_exports.app_db import export_jobs as job_rows
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.service.http import observability
from voicesurvey_exports.service.http.app import create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier

from .conftest import AppData, request_api
from .test_http_api import AUDIENCE, ISSUER, REPO, SECRET, oidc_subject, token, user_with_token


def client_on(engine, s3_client) -> TestClient:
    verifier = TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET))
    return TestClient(create_app(request_api(engine, s3_client), verifier))


@pytest.fixture
def app_data(postgres_url):
    return AppData(get_engine(postgres_url))


@pytest.fixture
def client(postgres_url, s3_client):
    return client_on(get_engine(postgres_url), s3_client)


def samples(client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_healthz_and_readyz_answer_200_while_the_database_answers(client):
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (
        200,
        {"status": "ok"},
    )
    assert (client.get("/readyz").status_code, client.get("/readyz").json()) == (
        200,
        {"status": "ready"},
    )


def test_readyz_is_503_and_healthz_200_when_the_database_is_gone(
    create_postgres_database, postgres_server, s3_client
):
    url = create_postgres_database("gone")
    upgrade(get_engine(url))
    client = client_on(create_engine(url), s3_client)  # a pool of the service's own
    assert client.get("/readyz").status_code == 200
    # The database goes away under the running service (its connections are ended).
    postgres_admin(postgres_server, f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    answer = client.get("/readyz")

    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert (body["status"], body["code"]) == (503, "unavailable")
    assert body["detail"].startswith("the app database does not answer: ")
    assert "\n" not in body["detail"]
    assert client.get("/healthz").status_code == 200  # alive: nothing to restart
    # The scrape still answers, saying the database is down, without the gauges.
    shown = samples(client)
    assert shown[("voicesurvey_app_database_up", ())] == 0
    assert not any(name == "voicesurvey_export_jobs" for name, _ in shown)


def test_metrics_count_jobs_by_status_the_oldest_pending_and_the_webhook_backlog(client, app_data):
    campaign = app_data.campaign()
    now = datetime.now(UTC)
    app_data.export_job(campaign, status="pending", created_at=now - timedelta(seconds=300))
    app_data.export_job(campaign, status="pending", created_at=now - timedelta(seconds=10))
    app_data.completed_export(campaign)
    failed = app_data.export_job(campaign)
    with app_data.engine.begin() as conn:  # ends it and writes its webhook notification
        assert job_rows.mark_failed(conn, failed, "S3 was down")

    shown = samples(client)

    jobs = {
        dict(labels)["status"]: value
        for (name, labels), value in shown.items()
        if name == "voicesurvey_export_jobs"
    }
    assert jobs == {"pending": 2, "running": 0, "completed": 1, "failed": 1, "cancelled": 0}
    assert 299 <= shown[("voicesurvey_export_oldest_pending_seconds", ())] <= 330
    assert shown[("voicesurvey_webhook_backlog", ())] == 1
    assert shown[("voicesurvey_app_database_up", ())] == 1


def test_no_pending_job_is_an_age_of_zero(client):
    assert samples(client)[("voicesurvey_export_oldest_pending_seconds", ())] == 0


def test_requests_are_counted_by_route_template_never_by_raw_path(client, app_data):
    _, headers = user_with_token(app_data, "campaign_manager")
    jobs = [uuid.uuid4() for _ in range(3)]
    for job in jobs:
        assert client.get(f"/api/exports/{job}", headers=headers).status_code == 404
    client.get("/no/such/path/abc123")
    client.get(f"/api/exports/{jobs[0]}")  # no token: 401

    shown = samples(client)

    route = "/api/exports/{job_id}"
    count = ("voicesurvey_http_requests_total", (("method", "GET"), ("route", route)))
    assert shown[(count[0], (*count[1], ("status", "404")))] == 3
    assert shown[(count[0], (*count[1], ("status", "401")))] == 1
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert shown[("voicesurvey_http_requests_total", unmatched)] == 1
    latency = (("le", "+Inf"), ("method", "GET"), ("route", route))
    assert shown[("voicesurvey_http_request_duration_seconds_bucket", latency)] == 4
    exposed = client.get("/metrics").text
    assert not any(str(job) in exposed for job in jobs)  # no ids, whatever was asked
    assert "abc123" not in exposed


def test_two_apps_in_one_process_keep_their_own_counts(postgres_url, s3_client):
    first, second = (client_on(get_engine(postgres_url), s3_client) for _ in range(2))
    first.get("/healthz")
    first.get("/healthz")
    key = (
        "voicesurvey_http_requests_total",
        (("method", "GET"), ("route", "/healthz"), ("status", "200")),
    )
    assert samples(first)[key] == 2
    assert key not in samples(second)


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("req-42.abc:DEF_9", "req-42.abc:DEF_9"),
        ("x" * 129, None),  # too long: a new one
        ("evil id\tx", None),  # not a plain token: a new one
        ("\u00e9t\u00e9".encode(), None),  # not ASCII (sent as its UTF-8 bytes)
        (None, None),
    ],
)
def test_the_request_id_is_taken_or_made_and_echoed(client, given, echoed):
    headers = {"X-Request-ID": given} if given is not None else {}
    answer = client.get("/healthz", headers=headers)
    rid = answer.headers["X-Request-ID"]
    if echoed is not None:
        assert rid == echoed
    else:
        assert rid != given and len(rid) == 32 and int(rid, 16) >= 0


def test_refusals_before_any_route_carry_the_request_id_too(client, app_data):
    campaign = app_data.campaign()
    refused = client.post(
        f"/api/campaigns/{campaign}/export",
        content=b"{}",
        headers={"X-Request-ID": "body-without-token", "Content-Type": "application/json"},
    )
    assert refused.status_code == 401  # answered by the body guard, before FastAPI
    assert refused.headers["X-Request-ID"] == "body-without-token"


def test_log_lines_of_a_request_carry_its_id_as_json(client, app_data):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(observability.RequestIdFilter())
    handler.setFormatter(observability.JsonFormatter())
    auth_logger = logging.getLogger("voicesurvey_exports.service.http.auth")
    auth_logger.addHandler(handler)
    level = auth_logger.level
    auth_logger.setLevel(logging.INFO)
    try:
        bad = {"Authorization": "Bearer not-a-token", "X-Request-ID": "trace-me-1"}
        assert client.get(f"/api/exports/{uuid.uuid4()}", headers=bad).status_code == 401
    finally:
        auth_logger.removeHandler(handler)
        auth_logger.setLevel(level)

    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert set(entry) == {"timestamp", "level", "logger", "message", "request_id"}
    assert (entry["level"], entry["logger"], entry["request_id"]) == (
        "INFO",
        "voicesurvey_exports.service.http.auth",
        "trace-me-1",
    )
    assert entry["message"].startswith("rejected bearer token")
    assert entry["timestamp"].endswith("Z")


def test_serve_with_log_format_json_writes_one_json_object_per_line(
    create_postgres_database, tmp_path
):
    url = create_postgres_database("json_logs")
    upgrade(get_engine(url))
    data = AppData(get_engine(url))
    port = process_group.free_port()
    env = {
        **os.environ,
        **local_services.LOCAL_CREDENTIALS,
        "DATABASE_URL": url,
        "AWS_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # no S3 call is made here
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWT_SECRET": SECRET,
        "LOG_FORMAT": "json",
    }
    log = tmp_path / "api.log"
    process = local_services.start_http_api(port, log, env, REPO)
    try:
        user = data.user("campaign_manager")
        headers = {
            "Authorization": f"Bearer {token(oidc_subject(data, user))}",
            "X-Request-ID": "from-the-app-7",
        }
        answer = requests.get(
            f"http://127.0.0.1:{port}/api/exports/{uuid.uuid4()}", headers=headers, timeout=10
        )
        assert (answer.status_code, answer.headers["X-Request-ID"]) == (404, "from-the-app-7")
    finally:
        process_group.stop_all([process])

    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert entries and all(
        {"timestamp", "level", "logger", "message", "request_id"} <= set(entry) for entry in entries
    )
    (access,) = [e for e in entries if e["request_id"] == "from-the-app-7"]
    assert access["logger"] == "uvicorn.access" and " 404" in access["message"]
