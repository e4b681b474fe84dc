"""Request bodies against the real `voicesurvey-exports serve` over real HTTP: no byte of a
body is read before its token verifies, and no body over EXPORT_HTTP_MAX_BODY_BYTES is
read whole, whatever its shape (Content-Length or chunked, in large or tiny chunks)."""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from dev import local_services, process_group
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.settings import DEFAULTS

from .conftest import AppData
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, rsa_key, token

pytestmark = pytest.mark.postgres

LIMIT = int(DEFAULTS["EXPORT_HTTP_MAX_BODY_BYTES"])  # the server runs on the default
REPO = Path(__file__).resolve().parents[1]
# How long a client waits for an answer the server owes it before sending the body.
EARLY_ANSWER_SECONDS = 5


@dataclass
class Server:
    process: object
    port: int
    app: AppData

    def peak_rss_mib(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def database(create_postgres_database) -> str:
    url = create_postgres_database("http_limits")
    upgrade(get_engine(url))
    return url


def start_server(database: str, log_dir: Path) -> Iterator[Server]:
    port = process_group.free_port()
    env = {
        **os.environ,
        **local_services.LOCAL_CREDENTIALS,
        "DATABASE_URL": database,
        "AWS_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # no S3 call is made by these requests
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWT_SECRET": SECRET,
    }
    process = local_services.start_http_api(port, log_dir / "api.log", env, REPO)
    try:
        yield Server(process, port, AppData(get_engine(database)))
    finally:
        process_group.stop_all([process])


@pytest.fixture(scope="module")
def server(database, tmp_path_factory) -> Iterator[Server]:
    yield from start_server(database, tmp_path_factory.mktemp("serve"))


@pytest.fixture
def fresh_server(database, tmp_path) -> Iterator[Server]:
    """A server of its own, so that its peak memory is this test's."""
    yield from start_server(database, tmp_path)


@pytest.fixture(scope="module")
def manager(server) -> tuple[str, uuid.UUID]:
    """A campaign manager's valid token, and a campaign to export."""
    user = server.app.user("campaign_manager")
    return token(oidc_subject(server.app, user)), server.app.campaign("Body limits")


@functools.cache
def foreign_key():
    return rsa_key()


def authorization(kind: str, good_token: str) -> str | None:
    """The Authorization header of each kind of caller (None: none at all)."""
    if kind == "none":
        return None
    if kind == "good":
        return f"Bearer {good_token}"
    if kind == "basic scheme":
        return "Basic dXNlcjpwYXNz"
    if kind == "garbage":
        return "Bearer not.a.jwt"
    if kind == "expired":
        return f"Bearer {token('someone', exp=int(time.time()) - 120)}"
    assert kind == "foreign key"
    return f"Bearer {token('someone', key=foreign_key(), algorithm='RS256')}"


def json_body(size: int) -> bytes:
    """Valid JSON options of exactly `size` bytes (padded with whitespace)."""
    options = b'{"bom": false}'
    return options + b" " * (size - len(options))


def chunks_of(body_size: int, chunk_size: int, filler: bytes | None = None) -> Iterator[bytes]:
    block = filler or json_body(body_size)
    sent = 0
    while sent < body_size:
        piece = min(chunk_size, body_size - sent)
        yield block[sent : sent + piece] if filler is None else block[:piece]
        sent += piece


@dataclass(frozen=True)
class Shape:
    """One way of sending a body: framing, and the size of each piece."""

    chunked: bool
    piece: int

    def __str__(self) -> str:
        if not self.chunked:
            return "Content-Length"
        return f"chunked in {self.piece}-byte chunks"


SHAPES = (Shape(False, 64 * 1024), Shape(True, 8192), Shape(True, 7))
TOKENS = ("none", "basic scheme", "garbage", "expired", "foreign key", "good")
SIZES = (100, LIMIT, LIMIT + 1, 1024 * 1024)


def body_cases():
    """Every token kind x body shape x size, with the answer the server owes and whether it
    owes it before the client has sent a byte of the body."""
    for kind in TOKENS:
        for shape in SHAPES:
            for size in SIZES:
                if kind != "good":
                    status, early = 401, True  # never read a body for a stranger
                elif size > LIMIT:
                    status, early = 413, not shape.chunked  # Content-Length says so at once
                else:
                    status, early = 202, False
                yield pytest.param(kind, shape, size, status, early, id=f"{kind}-{shape}-{size}")


def send_head(port: int, path: str, auth: str | None, shape: Shape, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if auth:
        head.append(f"Authorization: {auth}")
    head.append("Transfer-Encoding: chunked" if shape.chunked else f"Content-Length: {size}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


def send_body(sock: socket.socket, shape: Shape, size: int, filler: bytes | None = None) -> None:
    """Send the body; a server that already answered and closed is not an error here."""
    try:
        for piece in chunks_of(size, shape.piece, filler):
            if shape.chunked:
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                sock.sendall(piece)
        if shape.chunked:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_answer(sock: socket.socket, timeout: float = 30) -> tuple[int, dict]:
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()
    return response.status, json.loads(response.read() or b"null")


@pytest.mark.parametrize(("kind", "shape", "size", "status", "early"), list(body_cases()))
def test_a_body_is_read_only_after_its_token_and_only_up_to_the_limit(
    server, manager, kind, shape, size, status, early
):
    good_token, campaign = manager
    with server.app.engine.connect() as conn:
        jobs_before = len(conn.execute(select(export_jobs.c.id)).all())
    path = f"/api/campaigns/{campaign}/export"
    sock = send_head(server.port, path, authorization(kind, good_token), shape, size)
    with sock:
        if early:
            # Owed before any of the body: the client has sent none and still gets it.
            try:
                answered, detail = read_answer(sock, EARLY_ANSWER_SECONDS)
            except TimeoutError:
                pytest.fail(f"no answer before the body: the server waits to read {size} bytes")
        else:
            send_body(sock, shape, size)
            answered, detail = read_answer(sock)

    assert answered == status, detail
    with server.app.engine.connect() as conn:
        jobs_after = len(conn.execute(select(export_jobs.c.id)).all())
    assert jobs_after == jobs_before + (1 if status == 202 else 0)
    if status == 401:
        assert detail["detail"] in ("a bearer token is required", "invalid or expired bearer token")
    if status == 413:
        assert detail["detail"].startswith("request body ")
        assert f"over the limit of {LIMIT} bytes (EXPORT_HTTP_MAX_BODY_BYTES)" in detail["detail"]


HUGE = 150 * 1024 * 1024


@pytest.mark.parametrize(
    ("kind", "shape", "status"),
    [
        ("none", Shape(False, 1024 * 1024), 401),
        ("none", Shape(True, 1024 * 1024), 401),
        ("expired", Shape(True, 1024 * 1024), 401),
        ("good", Shape(False, 1024 * 1024), 413),
        ("good", Shape(True, 1024 * 1024), 413),
    ],
    ids=str,
)
def test_a_150_mb_body_leaves_the_servers_memory_flat(fresh_server, kind, shape, status):
    """The whole body is sent (the server discards what it does not read); the server's
    peak memory stays far below the body's size (it rose by 440 MB when bodies were read
    whole before the token was checked)."""
    app = fresh_server.app
    user = app.user("campaign_manager")
    good_token, campaign = token(oidc_subject(app, user)), app.campaign("Huge body")
    before = fresh_server.peak_rss_mib()

    sock = send_head(
        fresh_server.port,
        f"/api/campaigns/{campaign}/export",
        authorization(kind, good_token),
        shape,
        HUGE,
    )
    with sock:
        send_body(sock, shape, HUGE, filler=b" " * shape.piece)
        answered, _ = read_answer(sock)

    assert answered == status
    growth = fresh_server.peak_rss_mib() - before
    assert growth < 30, f"the server's peak memory rose by {growth:.0f} MiB for a refused body"


def test_the_service_takes_its_limit_from_the_environment(postgres_url, monkeypatch):
    from fastapi.testclient import TestClient

    from voicesurvey_exports.service.http.app import create_app

    for name, value in {
        "DATABASE_URL": postgres_url,
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWT_SECRET": SECRET,
        "EXPORT_HTTP_MAX_BODY_BYTES": "2048",
    }.items():
        monkeypatch.setenv(name, value)
    app = AppData(get_engine(postgres_url))
    user, campaign = app.user("campaign_manager"), app.campaign()
    headers = {
        "Authorization": f"Bearer {token(oidc_subject(app, user))}",
        "Content-Type": "application/json",
    }
    client = TestClient(create_app())
    path = f"/api/campaigns/{campaign}/export"

    assert client.post(path, headers=headers, content=json_body(2048)).status_code == 202
    refused = client.post(path, headers=headers, content=json_body(2049))
    assert (refused.status_code, refused.json()["code"]) == (413, "payload_too_large")
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["detail"] == (
        "request body of 2049 bytes is over the limit of 2048 bytes (EXPORT_HTTP_MAX_BODY_BYTES)"
    )
