"""The HTTP endpoints through FastAPI's test client: every endpoint for every role,
every kind of bad token, and the OpenAPI document."""

import json
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
from voicesurvey_exports.http.app import create_app, openapi_document
from voicesurvey_exports.http.auth import AuthSettings, TokenVerifier
from voicesurvey_exports.requests import ExportRequests
from voicesurvey_exports.settings import SettingsError

from .conftest import TEST_BUCKET, AppData

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


@pytest.fixture
def client(postgres_url, s3_client):
    api = ExportRequests(get_engine(postgres_url), s3_client, TEST_BUCKET, 600)
    verifier = TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET))
    return TestClient(create_app(api, verifier))


def oidc_subject(app_data: AppData, user_id: uuid.UUID) -> str:
    with app_data.engine.connect() as conn:
        return conn.execute(select(users.c.oidc_subject).where(users.c.id == user_id)).scalar_one()


def user_with_token(app_data: AppData, role: str) -> tuple[uuid.UUID, dict]:
    user_id = app_data.user(role)
    return user_id, {"Authorization": f"Bearer {token(oidc_subject(app_data, user_id))}"}


@pytest.fixture
def completed_job(app_data, s3_client):
    campaign = app_data.campaign("Autumn NPS")
    key = f"exports/{campaign}/{uuid.uuid4()}.csv"
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"campaign_id\r\n")
    job = app_data.export_job(
        campaign,
        app_data.user(),
        status="completed",
        s3_key=key,
        download_url="old",
        total_records=0,
    )
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
        "expired": token(sub, exp=now - 10),
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
    assert response.headers["WWW-Authenticate"] == "Bearer"


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
    api = ExportRequests(get_engine(postgres_url), s3_client, TEST_BUCKET, 600)
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
        api = ExportRequests(get_engine(postgres_url), s3_client, TEST_BUCKET, 600)
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
