"""The HTTP endpoints through FastAPI's test client: every endpoint for every role,
every kind of bad token, and the OpenAPI document."""

import json
import logging
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import export_jobs, users
from voicesurvey_exports.service.http.app import create_app, openapi_document
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier
from voicesurvey_exports.service.http.deps import export_requests
from voicesurvey_exports.settings import SettingsError

from .conftest import DEFAULT_OPTIONS, TEST_BUCKET, AppData, request_api
from .test_requests import (
    RetentionRacesTheRefresh,
    database_refusing_links,
    s3_client_without_credentials,
)

ISSUER, AUDIENCE, SECRET = "https://id.example.com/", "voicesurvey", "s" * 40
REPO = Path(__file__).resolve().parents[1]


def token(sub: str, key=SECRET, algorithm="HS256", **claims) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm)


@pytest.fixture
def app_data(postgres_url):
    return AppData(get_engine(postgres_url))


def service(engine, s3_client) -> TestClient:
    api = request_api(engine, s3_client)
    return TestClient(
        create_app(api, TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET)))
    )


@pytest.fixture
def client(postgres_url, s3_client):
    return service(get_engine(postgres_url), s3_client)


def oidc_subject(app_data: AppData, user_id: uuid.UUID) -> str:
    with app_data.engine.connect() as conn:
        return conn.execute(select(users.c.oidc_subject).where(users.c.id == user_id)).scalar_one()


def user_with_token(app_data: AppData, role: str) -> tuple[uuid.UUID, dict]:
    user_id = app_data.user(role)
    return user_id, {"Authorization": f"Bearer {token(oidc_subject(app_data, user_id))}"}


@pytest.fixture
def completed_job(app_data, s3_client):
    campaign = app_data.campaign("Autumn NPS")
    job = app_data.completed_export(campaign, app_data.user(), s3_client=s3_client, total_records=0)
    return campaign, job


def calls(campaign, job):
    return [
        ("GET", f"/api/campaigns/{campaign}/export", 202),
        ("POST", f"/api/campaigns/{campaign}/export", 202),
        ("GET", f"/api/campaigns/{campaign}/exports", 200),
        ("GET", f"/api/exports/{job}", 200),
        ("POST", f"/api/exports/{job}/refresh-url", 200),
    ]


@pytest.mark.parametrize("role", ["campaign_manager", "admin"])
def test_managers_and_admins_get_every_endpoint(client, app_data, completed_job, role):
    campaign, job = completed_job
    _, headers = user_with_token(app_data, role)
    for method, path, expected in calls(campaign, job):
        response = client.request(method, path, headers=headers)
        assert response.status_code == expected, (method, path, response.text)


def test_viewer_gets_403_on_every_endpoint_and_nothing_is_written(client, app_data, completed_job):
    campaign, job = completed_job
    viewer, headers = user_with_token(app_data, "viewer")
    before = app_data.job_row(job)
    for method, path, _ in calls(campaign, job):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 403, (method, path)
        assert "viewer" in response.json()["detail"]
    assert app_data.count(export_jobs) == 1 and app_data.job_row(job) == before


def test_unknown_subject_gets_403(client, completed_job):
    campaign, job = completed_job
    headers = {"Authorization": f"Bearer {token('nobody-knows-me')}"}
    for method, path, _ in calls(campaign, job):
        assert client.request(method, path, headers=headers).status_code == 403


def test_request_returns_202_with_a_pending_job_then_the_job_is_readable(client, app_data):
    campaign = app_data.campaign()
    user, headers = user_with_token(app_data, "campaign_manager")
    created = client.post(f"/api/campaigns/{campaign}/export", headers=headers)
    assert created.status_code == 202
    body = created.json()
    assert (body["status"], body["campaign_id"]) == ("pending", str(campaign))
    job = client.get(f"/api/exports/{body['job_id']}", headers=headers).json()
    assert (job["status"], job["requested_by_user_id"], job["download_url"]) == (
        "pending",
        str(user),
        None,
    )


def test_post_takes_the_options_as_an_optional_json_body(client, app_data):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    path = f"/api/campaigns/{campaign}/export"

    both = client.post(path, headers=headers, json={"bom": True, "compression": "gzip"})
    gzip_only = client.post(path, headers=headers, json={"compression": "gzip"})
    no_body = client.post(path, headers=headers)
    empty_body = client.post(
        path, headers={**headers, "Content-Type": "application/json"}, content=b""
    )
    empty_object = client.post(path, headers=headers, json={})

    assert [r.status_code for r in (both, gzip_only, no_body, empty_body, empty_object)] == [
        202
    ] * 5
    assert both.json()["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "gzip"}
    assert gzip_only.json()["options"] == {**DEFAULT_OPTIONS, "bom": False, "compression": "gzip"}
    for defaults in (no_body, empty_body, empty_object):
        assert defaults.json()["options"] == {
            **DEFAULT_OPTIONS,
            "bom": False,
            "compression": "none",
        }
    stored = app_data.job_row(uuid.UUID(both.json()["job_id"]))
    assert (stored["bom"], stored["compression"]) == (True, "gzip")
    shown = client.get(f"/api/exports/{both.json()['job_id']}", headers=headers).json()
    assert shown["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "gzip"}
    listed = client.get(f"/api/campaigns/{campaign}/exports", headers=headers).json()
    assert [job["options"]["compression"] for job in listed].count("gzip") == 2


def test_get_takes_the_options_as_query_parameters(client, app_data):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    path = f"/api/campaigns/{campaign}/export"

    both = client.get(f"{path}?bom=true&compression=gzip", headers=headers)
    bom_only = client.get(f"{path}?bom=true", headers=headers)
    none = client.get(path, headers=headers)

    assert [r.status_code for r in (both, bom_only, none)] == [202] * 3
    assert both.json()["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "gzip"}
    assert bom_only.json()["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "none"}
    assert none.json()["options"] == {**DEFAULT_OPTIONS, "bom": False, "compression": "none"}
    stored = app_data.job_row(uuid.UUID(both.json()["job_id"]))
    assert (stored["bom"], stored["compression"]) == (True, "gzip")


@pytest.mark.parametrize(
    ("method", "options", "field"),
    [
        ("POST", {"zip": True}, "zip"),
        ("POST", {"bom": True, "format": "pdf"}, "format"),
        ("POST", {"outcomes": "refused"}, "outcomes"),
        ("GET", {"format": "xls"}, "format"),
        ("POST", {"compression": "zip"}, "compression"),
        ("POST", {"compression": "GZIP"}, "compression"),
        ("POST", {"compression": None}, "compression"),
        ("POST", {"bom": "maybe"}, "bom"),
        ("POST", {"bom": [True]}, "bom"),
        ("POST", {"compression": 1}, "compression"),
        ("POST", ["gzip"], None),
        ("POST", "gzip", None),
        ("GET", {"zip": "true"}, "zip"),
        ("GET", {"compression": "zip"}, "compression"),
        ("GET", {"compression": "gzip", "level": "9"}, "level"),
        ("GET", {"bom": "maybe"}, "bom"),
        # JSON options take JSON booleans; query values are exactly true or false.
        ("POST", {"bom": 1}, "bom"),
        ("POST", {"bom": 0}, "bom"),
        ("POST", {"bom": "true"}, "bom"),
        ("POST", {"bom": "false"}, "bom"),
        ("POST", {"bom": None}, "bom"),
        ("POST", {"bom": 1.0}, "bom"),
        ("GET", {"bom": "yes"}, "bom"),
        ("GET", {"bom": "on"}, "bom"),
        ("GET", {"bom": "1"}, "bom"),
        ("GET", {"bom": "0"}, "bom"),
        ("GET", {"bom": "TRUE"}, "bom"),
        ("GET", {"bom": "False"}, "bom"),
        ("GET", {"bom": ""}, "bom"),
        ("GET", {"compression": ""}, "compression"),
        # A repeated parameter is refused, not settled by its last value.
        ("GET", [("compression", "gzip"), ("compression", "none")], "compression"),
        ("GET", [("bom", "true"), ("bom", "true")], "bom"),
        ("GET", [("bom", "true"), ("compression", "gzip"), ("bom", "false")], "bom"),
    ],
)
def test_an_unknown_option_or_value_is_422_and_nothing_is_written(
    client, app_data, method, options, field
):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    path = f"/api/campaigns/{campaign}/export"

    if method == "POST":
        response = client.post(path, headers=headers, json=options)
    else:
        response = client.get(path, headers=headers, params=options)

    assert response.status_code == 422, response.text
    if field is not None:  # FastAPI's validation error names the offending field
        assert field in [error["loc"][-1] for error in response.json()["errors"]]
    assert app_data.count(export_jobs) == 0


def test_a_repeated_query_parameter_is_422_naming_it_and_its_values(client, app_data):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    response = client.get(
        f"/api/campaigns/{campaign}/export?compression=gzip&compression=none", headers=headers
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["loc"] == ["query", "compression"]
    assert error["msg"] == "query parameter compression is given 2 times: give it once"
    assert error["input"] == ["gzip", "none"]
    assert app_data.count(export_jobs) == 0


def test_options_in_a_posts_query_are_422_not_silently_ignored(client, app_data):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    response = client.post(
        f"/api/campaigns/{campaign}/export?compression=gzip&bom=true", headers=headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        "query parameters bom, compression are not taken by POST: send the options as the "
        'JSON body, e.g. {"bom": true, "compression": "gzip"}'
    )
    assert app_data.count(export_jobs) == 0


def test_a_job_shows_its_files_size_and_sha256(client, app_data):
    campaign = app_data.campaign()
    digest = "0f" * 32
    job = app_data.completed_export(campaign, total_records=3, size_bytes=250, sha256=digest)
    _, headers = user_with_token(app_data, "campaign_manager")
    shown = client.get(f"/api/exports/{job}", headers=headers).json()
    assert (shown["size_bytes"], shown["sha256"]) == (250, digest)
    pending = app_data.export_job(campaign, app_data.user())
    shown = client.get(f"/api/exports/{pending}", headers=headers).json()
    assert (shown["size_bytes"], shown["sha256"]) == (None, None)


def test_refresh_re_signs_and_refuses_unfinished_jobs(client, app_data, completed_job):
    campaign, job = completed_job
    _, headers = user_with_token(app_data, "admin")
    refreshed = client.post(f"/api/exports/{job}/refresh-url", headers=headers).json()
    assert refreshed["download_url"] != "old" and "Autumn-NPS" in refreshed["download_url"]
    pending = app_data.export_job(campaign, app_data.user())
    response = client.post(f"/api/exports/{pending}/refresh-url", headers=headers)
    assert response.status_code == 409 and "pending" in response.json()["detail"]


def test_unknown_ids_are_404_and_malformed_ids_422(client, app_data):
    _, headers = user_with_token(app_data, "admin")
    missing = uuid.uuid4()
    assert client.get(f"/api/campaigns/{missing}/export", headers=headers).status_code == 404
    assert client.get(f"/api/campaigns/{missing}/exports", headers=headers).status_code == 404
    assert client.get(f"/api/exports/{missing}", headers=headers).status_code == 404
    assert client.post(f"/api/exports/{missing}/refresh-url", headers=headers).status_code == 404
    assert client.get("/api/exports/not-a-uuid", headers=headers).status_code == 422
    assert client.get("/api/campaigns/42/export", headers=headers).status_code == 422
    assert app_data.count(export_jobs) == 0


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    "bad",
    [
        "missing",
        "garbage",
        "expired",
        "not_yet_valid",
        "wrong_secret",
        "wrong_issuer",
        "wrong_audience",
        "alg_none",
        "no_expiry",
        "rs256_with_unknown_key",
    ],
)
def test_invalid_tokens_get_401(client, app_data, completed_job, bad):
    campaign, _ = completed_job
    user_id = app_data.user("admin")
    sub = oidc_subject(app_data, user_id)
    now = int(time.time())
    tokens = {
        "missing": None,
        "garbage": "not.a.jwt",
        "expired": token(sub, exp=now - 120),  # beyond the 30 s leeway
        "not_yet_valid": token(sub, nbf=now + 600),
        "wrong_secret": token(sub, key="x" * 40),
        "wrong_issuer": token(sub, iss="https://evil.example.com/"),
        "wrong_audience": token(sub, aud="someone-else"),
        "alg_none": jwt.encode(
            {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}, None, algorithm="none"
        ),
        "no_expiry": token(sub, exp=None),
        "rs256_with_unknown_key": token(sub, key=rsa_key(), algorithm="RS256"),
    }
    headers = {"Authorization": f"Bearer {tokens[bad]}"} if tokens[bad] else {}
    response = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    if bad == "missing":
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthenticated"
    else:  # RFC 6750: a token was sent, and it is not good
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert response.json()["code"] == "invalid_token"


def test_tokens_get_30_seconds_of_clock_skew(client, app_data, completed_job):
    campaign, _ = completed_job
    sub = oidc_subject(app_data, app_data.user("admin"))
    now = int(time.time())
    for claims in ({"exp": now - 10}, {"nbf": now + 10}, {"iat": now + 10}):
        headers = {"Authorization": f"Bearer {token(sub, **claims)}"}
        response = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
        assert response.status_code == 200, (claims, response.text)
    for claims in ({"exp": now - 120}, {"nbf": now + 120}):
        headers = {"Authorization": f"Bearer {token(sub, **claims)}"}
        response = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
        assert response.status_code == 401, claims


def test_a_rejected_token_gets_a_fixed_body_and_the_reason_is_only_logged(
    client, app_data, completed_job, caplog
):
    campaign, _ = completed_job
    sub = oidc_subject(app_data, app_data.user("admin"))
    now = int(time.time())
    bodies = set()
    for bad, reason in (
        (token(sub, exp=now - 120), "ExpiredSignatureError"),
        (token(sub, iss="https://id.example.com.evil/"), "InvalidIssuerError"),
        (token(sub, aud="someone-else"), "InvalidAudienceError"),
        (token(sub, key="x" * 40), "InvalidSignatureError"),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="voicesurvey_exports.service.http.auth"):
            response = client.get(
                f"/api/campaigns/{campaign}/exports", headers={"Authorization": f"Bearer {bad}"}
            )
        assert response.status_code == 401
        bodies.add(response.text)
        assert reason in caplog.text, caplog.text
    assert [json.loads(body) for body in bodies] == [
        {
            "type": "https://voicesurvey.example/problems/invalid_token",
            "title": "Invalid bearer token",
            "status": 401,
            "detail": "invalid or expired bearer token",
            "code": "invalid_token",
        }
    ]


def test_an_unknown_key_id_is_logged_but_never_echoed(
    postgres_url, s3_client, app_data, tmp_path, caplog
):
    private = rsa_key()
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public_jwk, "kid": "k1"}]}))
    settings = AuthSettings(ISSUER, AUDIENCE, jwks_file=str(tmp_path / "jwks.json"))
    api = request_api(get_engine(postgres_url), s3_client)
    client = TestClient(create_app(api, TokenVerifier(settings)))
    now = int(time.time())
    forged = jwt.encode(
        {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60},
        private,
        algorithm="RS256",
        headers={"kid": "probe-kid-<script>"},
    )
    with caplog.at_level(logging.INFO, logger="voicesurvey_exports.service.http.auth"):
        response = client.get(
            f"/api/campaigns/{app_data.campaign()}/exports",
            headers={"Authorization": f"Bearer {forged}"},
        )
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or expired bearer token"
    assert "probe-kid" in caplog.text and "no key with id" in caplog.text


def test_rs256_tokens_verify_against_a_jwks_file(postgres_url, s3_client, app_data, tmp_path):
    private = rsa_key()
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [{**public_jwk, "kid": "k1", "use": "sig"}]})
    )
    settings = AuthSettings.from_env(
        {
            "AUTH_ISSUER": ISSUER,
            "AUTH_AUDIENCE": AUDIENCE,
            "AUTH_JWKS_FILE": str(tmp_path / "jwks.json"),
        }
    )
    api = request_api(get_engine(postgres_url), s3_client)
    client = TestClient(create_app(api, TokenVerifier(settings)))
    campaign = app_data.campaign()
    user_id = app_data.user("campaign_manager")
    sub = oidc_subject(app_data, user_id)
    now = int(time.time())
    signed = jwt.encode(
        {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60},
        private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    headers = {"Authorization": f"Bearer {signed}"}
    assert client.get(f"/api/campaigns/{campaign}/exports", headers=headers).status_code == 200
    # An HS256 token signed with the public key must not pass (algorithm confusion).
    forged = jwt.encode(
        {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60},
        "k1" * 20,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    assert (
        client.get(
            f"/api/campaigns/{campaign}/exports", headers={"Authorization": f"Bearer {forged}"}
        ).status_code
        == 401
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "AUTH_ISSUER is not set"),
        ({"AUTH_ISSUER": ISSUER}, "AUTH_AUDIENCE is not set"),
        ({"AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE}, "never accepts unsigned tokens"),
        (
            {"AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE, "AUTH_JWT_SECRET": "short"},
            "at least 32 characters",
        ),
    ],
)
def test_service_refuses_to_start_without_a_token_key(env, message):
    with pytest.raises(SettingsError, match=message):
        AuthSettings.from_env(env)


def test_openapi_document_in_docs_is_current():
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: run .venv/bin/voicesurvey-exports openapi > docs/openapi.json"
    )


def test_openapi_names_the_seed_models_and_endpoints():
    document = openapi_document()
    assert {"ExportJobCreateResponse", "ExportJobResponse"} <= set(
        document["components"]["schemas"]
    )
    assert set(document["paths"]["/api/campaigns/{campaign_id}/export"]) == {"get", "post"}


def test_rs256_tokens_verify_against_a_jwks_url(postgres_url, s3_client, app_data):
    import http.server
    import threading

    private = rsa_key()
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = json.dumps({"keys": [{**public_jwk, "kid": "url-key", "use": "sig"}]}).encode()

    class JwksHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), JwksHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = AuthSettings.from_env(
            {
                "AUTH_ISSUER": ISSUER,
                "AUTH_AUDIENCE": AUDIENCE,
                "AUTH_JWKS_URL": f"http://127.0.0.1:{server.server_port}/jwks.json",
            }
        )
        api = request_api(get_engine(postgres_url), s3_client)
        client = TestClient(create_app(api, TokenVerifier(settings)))
        campaign, user_id = app_data.campaign(), app_data.user("admin")
        now = int(time.time())
        signed = jwt.encode(
            {
                "sub": oidc_subject(app_data, user_id),
                "iss": ISSUER,
                "aud": AUDIENCE,
                "exp": now + 60,
            },
            private,
            algorithm="RS256",
            headers={"kid": "url-key"},
        )
        response = client.get(
            f"/api/campaigns/{campaign}/exports", headers={"Authorization": f"Bearer {signed}"}
        )
        assert response.status_code == 200, response.text
    finally:
        server.shutdown()


def with_request_api(client: TestClient, api) -> TestClient:
    """The client's app, its routes using another request API."""
    client.app.dependency_overrides[export_requests] = lambda: api
    return client


def test_refresh_without_s3_credentials_is_503_naming_the_cause(
    client, postgres_url, app_data, completed_job
):
    _, job = completed_job
    with_request_api(client, request_api(get_engine(postgres_url), s3_client_without_credentials()))
    _, headers = user_with_token(app_data, "admin")
    before = app_data.job_row(job)
    response = client.post(f"/api/exports/{job}/refresh-url", headers=headers)
    assert (response.status_code, response.json()["code"]) == (503, "unavailable")
    assert response.json()["detail"] == (
        "cannot check the export file in S3: NoCredentialsError: Unable to locate credentials"
    )
    assert app_data.job_row(job) == before


def test_refresh_of_a_file_gone_from_s3_is_409_and_the_job_says_so(
    client, app_data, completed_job, s3_client
):
    _, job = completed_job
    _, headers = user_with_token(app_data, "admin")
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=app_data.job_row(job)["s3_key"])
    response = client.post(f"/api/exports/{job}/refresh-url", headers=headers)
    assert response.status_code == 409
    assert "the file no longer exists in S3; request a new export" in response.json()["detail"]
    shown = client.get(f"/api/exports/{job}", headers=headers).json()
    assert (shown["download_url"], shown["error_message"]) == (
        None,
        "the file no longer exists in S3; request a new export",
    )


def test_refresh_racing_retention_is_409_without_a_link(
    client, postgres_url, app_data, completed_job, s3_client
):
    _, job = completed_job
    engine = get_engine(postgres_url)
    with_request_api(client, request_api(engine, RetentionRacesTheRefresh(s3_client, engine)))
    _, headers = user_with_token(app_data, "admin")
    response = client.post(f"/api/exports/{job}/refresh-url", headers=headers)
    assert response.status_code == 409 and "X-Amz" not in response.text
    assert app_data.job_row(job)["download_url"] is None


def test_a_failed_link_write_is_503_and_neither_body_nor_log_has_the_link(
    create_postgres_database, s3_client, caplog
):
    engine = database_refusing_links(create_postgres_database)
    data = AppData(engine)
    job = data.completed_export(s3_client=s3_client)
    client = service(engine, s3_client)
    _, headers = user_with_token(data, "admin")
    with caplog.at_level(logging.INFO):  # botocore DEBUG-logs its own signing; not ours
        response = client.post(f"/api/exports/{job}/refresh-url", headers=headers)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the app database is unavailable: ")
    assert "short_links" in response.text
    for text in (response.text, caplog.text):
        assert "X-Amz" not in text and "Signature" not in text


def test_an_unreachable_database_is_503_not_500(s3_client):
    client = service(get_engine("postgresql://nobody@127.0.0.1:1/none"), s3_client)
    response = client.get(
        f"/api/exports/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token('someone')}"}
    )
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the app database is unavailable: ")
