"""EXPORT_REQUESTS_PER_MINUTE: how many exports one user may start in any 60 s, counted in
the app database so that every service replica shares it; past it, 429 with Retry-After
(exit 6 on the CLI), nothing recorded; reading is never limited."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.service import cli as cli_module
from voicesurvey_exports.service.http.app import create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier
from voicesurvey_exports.service.requests import RateLimited
from voicesurvey_exports.settings import Settings, SettingsError

from .conftest import TEST_BUCKET, AppData, request_api
from .test_http_api import AUDIENCE, ISSUER, SECRET, user_with_token


def client_for(engine, s3_client, limit: int) -> TestClient:
    api = request_api(engine, s3_client, EXPORT_REQUESTS_PER_MINUTE=str(limit))
    verifier = TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET))
    return TestClient(create_app(api, verifier))


@pytest.fixture
def app_data(postgres_url):
    return AppData(get_engine(postgres_url))


def test_past_the_limit_is_429_with_retry_after_and_nothing_is_recorded(
    app_data, s3_client, postgres_url
):
    client = client_for(get_engine(postgres_url), s3_client, limit=2)
    campaign = app_data.campaign()
    manager, headers = user_with_token(app_data, "campaign_manager")
    path = f"/api/campaigns/{campaign}/export"
    started = [client.post(path, headers=headers), client.get(path, headers=headers)]
    assert [answer.status_code for answer in started] == [202, 202]

    refused = client.post(path, headers=headers)

    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["detail"] == (
        f"user {manager} started 2 exports in the last 60 s, the most "
        f"EXPORT_REQUESTS_PER_MINUTE=2 allows: try again in {refused.headers['Retry-After']} s"
    )
    assert client.get(path, headers=headers).status_code == 429  # the seed's GET too
    assert app_data.count(export_jobs) == 2
    # Reading is not limited: the list and each job, as often as the app likes.
    for _ in range(5):
        assert len(client.get(f"/api/campaigns/{campaign}/exports", headers=headers).json()) == 2
        job = started[0].json()["job_id"]
        assert client.get(f"/api/exports/{job}", headers=headers).status_code == 200
    # Another user is not affected by this one's count.
    _, other = user_with_token(app_data, "admin")
    assert client.post(path, headers=other).status_code == 202


def test_the_window_is_the_last_60_seconds_and_retry_after_counts_down_to_its_end(
    app_data, s3_client, postgres_url
):
    api = request_api(get_engine(postgres_url), s3_client, EXPORT_REQUESTS_PER_MINUTE="2")
    campaign, manager = app_data.campaign(), app_data.user()
    now = datetime.now(UTC)
    app_data.export_job(campaign, manager, created_at=now - timedelta(seconds=61))  # outside
    app_data.export_job(campaign, manager, created_at=now - timedelta(seconds=45))
    api.request_export(campaign, manager)  # the second within the window

    with pytest.raises(RateLimited) as refused:
        api.request_export(campaign, manager)
    # The one of 45 s ago leaves the window in about 15 s.
    assert 14 <= refused.value.retry_after_seconds <= 16


def test_two_replicas_share_one_count(app_data, s3_client, postgres_url):
    """Two ExportRequests on engines of their own, as two service processes would have."""
    replicas = [
        request_api(create_engine(postgres_url), s3_client, EXPORT_REQUESTS_PER_MINUTE="3")
        for _ in range(2)
    ]
    campaign, manager = app_data.campaign(), app_data.user()
    replicas[0].request_export(campaign, manager)
    replicas[1].request_export(campaign, manager)
    replicas[0].request_export(campaign, manager)
    for replica in replicas:
        with pytest.raises(RateLimited):
            replica.request_export(campaign, manager)
    assert app_data.count(export_jobs) == 3


def test_concurrent_requests_of_one_user_never_pass_the_limit(app_data, s3_client, postgres_url):
    replicas = [
        request_api(create_engine(postgres_url), s3_client, EXPORT_REQUESTS_PER_MINUTE="4")
        for _ in range(2)
    ]
    campaign, manager = app_data.campaign(), app_data.user()
    outcomes: list[str] = []
    barrier = threading.Barrier(12)

    def request(api):
        barrier.wait()
        try:
            api.request_export(campaign, manager)
            outcomes.append("accepted")
        except RateLimited:
            outcomes.append("limited")

    threads = [threading.Thread(target=request, args=(replicas[i % 2],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["accepted"] * 4 + ["limited"] * 8
    assert app_data.count(export_jobs) == 4


def test_sqlite_counts_the_same_way(sqlite_url, s3_client):
    app_data = AppData(get_engine(sqlite_url))
    api = request_api(app_data.engine, s3_client, EXPORT_REQUESTS_PER_MINUTE="1")
    campaign, manager = app_data.campaign(), app_data.user()
    api.request_export(campaign, manager)
    with pytest.raises(RateLimited) as refused:
        api.request_export(campaign, manager)
    assert 1 <= refused.value.retry_after_seconds <= 60
    api.request_export(campaign, app_data.user("admin"))
    assert app_data.count(export_jobs) == 2


def test_the_cli_exits_6_past_the_limit(app_data, postgres_url, monkeypatch, s3_client, capsys):
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("S3_BUCKET_NAME", TEST_BUCKET)
    monkeypatch.setenv("EXPORT_REQUESTS_PER_MINUTE", "1")
    args = ["request", "--campaign-id", str(app_data.campaign()), "--user-id", str(app_data.user())]
    assert cli_module.main(args) == 0
    capsys.readouterr()
    assert cli_module.main(args) == cli_module.EXIT_RATE_LIMITED == 6
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: user ") and err.endswith(" s\n")
    assert app_data.count(export_jobs) == 1


def test_the_default_is_10_and_the_limit_must_be_a_whole_number_from_1():
    base = {"DATABASE_URL": "sqlite:///app.db"}
    assert Settings.from_env(base).export_requests_per_minute == 10
    assert Settings.from_env({**base, "EXPORT_REQUESTS_PER_MINUTE": "1000"})
    for value in ("0", "-1", "1001", "ten"):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({**base, "EXPORT_REQUESTS_PER_MINUTE": value})
        assert str(refused.value) == (
            f"EXPORT_REQUESTS_PER_MINUTE={value!r} must be a whole number (digits 0-9) of at "
            "least 1 and at most 1000 (exports one user may start in any 60 s; each is a "
            "Dagster run)"
        )
