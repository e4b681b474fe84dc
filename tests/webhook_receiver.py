"""A real HTTP receiver for the completion webhook, on loopback in a thread of the test."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "test-webhook-secret-0123456789"
SPEC_KEYS = {
    "event",
    "job_id",
    "campaign_id",
    "status",
    "total_records",
    "error_message",
    "occurred_at",
}


@dataclass(frozen=True)
class Request:
    """One POST the receiver got, and the status it answered."""

    path: str
    headers: Message  # names are case-insensitive, as in HTTP
    body: bytes
    answered: int
    at: float  # time.monotonic()

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers["X-VoiceSurvey-Delivery"]

    def signature_valid(self, secret: str = SECRET) -> bool:
        """What the app does (README "Completion webhook"): HMAC of the raw body."""
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-VoiceSurvey-Signature", ""))


@dataclass
class Receiver:
    """Answers ``failure`` (default 503) to its first ``fail_first`` requests and ``ok``
    after, each ``delay`` seconds late. Every request is recorded."""

    fail_first: int = 0
    failure: int = 503
    ok: int = 200
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = (
                        receiver.failure
                        if len(receiver.requests) < receiver.fail_first
                        else receiver.ok
                    )
                    receiver.requests.append(
                        Request(self.path, self.headers, body, status, time.monotonic())
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # keep the test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are then refused); ``start`` again on the same port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str = "/hooks/exports?token=query-token-123") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def acknowledged(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def acknowledged_by_job_and_event(self) -> dict[tuple[str, str], list[Request]]:
        out: dict[tuple[str, str], list[Request]] = {}
        for request in self.acknowledged:
            out.setdefault((request.json["job_id"], request.json["event"]), []).append(request)
        return out
