"""A real HTTP receiver for the completion webhook, on loopback in a thread of the test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks

# A Standard Webhooks secret: whsec_ and the base64 of 32 bytes.
SECRET = "whsec_" + base64.b64encode(b"test-webhook-key-0123456789abcde").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-webhook-key-0123456789ab").decode()
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
        return self.headers["webhook-id"]

    def signature_valid(self, secret: str = SECRET) -> bool:
        """What the app does (docs/webhooks.md): the standardwebhooks package verifies the
        webhook-* headers over the raw body; a raw (non-whsec) secret is its UTF-8 bytes."""
        key = secret if secret.startswith("whsec_") else secret.encode()
        try:
            standardwebhooks.Webhook(key).verify(self.body, dict(self.headers.items()))
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    def legacy_signature_valid(self, key: bytes) -> bool:
        """The deprecated X-VoiceSurvey-Signature: HMAC of the raw body (one more release)."""
        expected = "sha256=" + hmac.new(key, self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-VoiceSurvey-Signature", ""))


# Sent by a dripping receiver after its status line: long enough that dripping it takes
# many times an attempt's deadline.
PADDING_HEADER = b"X-Padding: " + b"p" * 40 + b"\r\n"


@dataclass
class Receiver:
    """Answers ``failure`` (default 503) to its first ``fail_first`` requests and ``ok``
    after, each ``delay`` seconds late. Every request is recorded.

    Slow receivers: ``accept_delay`` waits that long before accepting each connection;
    ``drip`` "headers" sends the answer's status line and headers a byte every
    ``drip_interval`` seconds, "body" sends them at once and then drips a body of 100
    bytes. ``location`` adds a Location header (for redirects)."""

    fail_first: int = 0
    failure: int = 503
    ok: int = 200
    delay: float = 0.0
    accept_delay: float = 0.0
    drip: str | None = None
    drip_interval: float = 0.5
    location: str | None = None
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
                if receiver.drip:
                    self.drip(status)
                    return
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def drip(self, status: int) -> None:
                body = b"x" * 100
                head = (
                    f"HTTP/1.1 {status} Whatever\r\nContent-Length: {len(body)}\r\n".encode()
                    + PADDING_HEADER
                    + b"\r\n"
                )
                if receiver.drip == "body":
                    self.wfile.write(head)
                slow = head if receiver.drip == "headers" else body
                try:
                    for i in range(len(slow)):
                        self.wfile.write(slow[i : i + 1])
                        time.sleep(receiver.drip_interval)
                    if receiver.drip == "headers":
                        self.wfile.write(body)
                except OSError:
                    pass  # the sender gave up and closed the connection
                self.close_connection = True

            def log_message(self, *args):  # keep the test output quiet
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self):
                # A receiver too busy to accept: the kernel completes the handshake (the
                # listen backlog), the request waits in the socket, nobody reads it yet.
                if receiver.accept_delay:
                    time.sleep(receiver.accept_delay)
                return super().get_request()

        self._server = Server(("127.0.0.1", self.port), Handler)
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
