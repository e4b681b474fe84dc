"""The completion webhook: each export job's end, announced to the app by a signed POST.

export_jobs writes one outbox row (app_db/notifications.py) per job and terminal status
in the transaction that ends the job; ``export_webhook_sensor`` delivers due rows every
2 s. All delivery state is in that table, so a restart of the daemon or the code server
loses nothing and repeats nothing that was acknowledged.

Delivery is at least once: a 2xx marks the row delivered. Connection errors, timeouts,
5xx, 408 and 429 are retried with exponential backoff (1 s, 2 s, 4 s ... at most 60 s
apart) until 24 h after the job ended, then abandoned; any other answer abandons at
once. Should recording a 2xx fail, the next tick sends the same body again with the same
``webhook-id`` (Standard Webhooks, docs/webhooks.md), which receivers use to drop the
duplicate. Nothing here changes an export job.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.client
import io
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata

import dagster as dg
from sqlalchemy import Engine

from ..app_db import notifications
from ..app_db.notifications import Notification
from ..settings import Settings, redact_url, webhook_signing_keys
from .resources import AppDatabase

# Standard Webhooks (standardwebhooks.com): the delivery id (the same on every attempt),
# this attempt's time in unix seconds, and "v1,<base64 HMAC-SHA256 of id.timestamp.body>"
# once per secret, separated by spaces.
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
# The seed's headers, kept for one more release (docs/webhooks.md) so that receivers can
# move to the standard ones first; the signature is keyed with the first secret only.
SIGNATURE_HEADER = "X-VoiceSurvey-Signature"
EVENT_HEADER = "X-VoiceSurvey-Event"
DELIVERY_HEADER = "X-VoiceSurvey-Delivery"
# One deadline per attempt, from its start: connecting, sending and reading the answer's
# status line and headers together (a receiver that trickles bytes cannot stretch it).
TIMEOUT_SECONDS = 5
# Retried this long after the notification was written (the job's end), then abandoned.
RETRY_WINDOW = timedelta(hours=24)
MAX_BACKOFF_SECONDS = 60
# Answers that say "try again later"; every other non-2xx is the receiver refusing.
RETRY_STATUSES = frozenset({408, 429})
# One tick sends at most this many, for at most about this long (plus one attempt's
# deadline), so that a slow receiver never holds a tick near Dagster's 60 s sensor timeout.
TICK_LIMIT = 50
TICK_BUDGET_SECONDS = 20
SENSOR_NAME = "export_webhook_sensor"


def _user_agent() -> str:
    try:
        version = metadata.version("voicesurvey-exports")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"voicesurvey-exports/{version} (export webhook)"


USER_AGENT = _user_agent()


def sign(body: bytes, key: bytes) -> str:
    """The X-VoiceSurvey-Signature value (deprecated): HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def standard_signature(delivery_id: str, timestamp: int, body: bytes, keys: list[bytes]) -> str:
    """The webhook-signature value: ``v1,<base64>`` per key, separated by spaces."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def signed_headers(notification: Notification, body: bytes, secret: str, now: float) -> dict:
    """Every header that identifies and signs one attempt at the notification."""
    keys = webhook_signing_keys(secret)
    delivery_id, timestamp = str(notification.id), int(now)
    return {
        ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: standard_signature(delivery_id, timestamp, body, keys),
        SIGNATURE_HEADER: sign(body, keys[0]),
        EVENT_HEADER: notification.event,
        DELIVERY_HEADER: delivery_id,
    }


def backoff(attempts: int) -> timedelta:
    """The wait after the attempts-th failed attempt: 1 s, 2 s, 4 s ... at most 60 s."""
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 2 ** min(max(attempts - 1, 0), 6)))


@dataclass(frozen=True)
class Answer:
    """What one POST came to: the HTTP status, or a connection error (status None)."""

    status: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in RETRY_STATUSES

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.error is None else self.error


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect would turn the POST into a GET without the body: report it instead.
    def redirect_request(self, *args, **kwargs):
        return None


class _DeadlineReader(io.RawIOBase):
    """The answer's socket, read with no wait past the attempt's deadline: a socket timeout
    bounds each read only, and a receiver sending a byte every few seconds would hold the
    attempt (and the sensor's thread) for as long as it liked."""

    def __init__(self, raw, sock, deadline: float):
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()  # the socket's own reader: it closes the socket when last
        super().close()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return remaining


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


class _DeadlineConnection:
    """Connects and sends within what is left of the deadline, and reads through
    _DeadlineReader. (TLS: the handshake runs under the timeout set at connect, which
    CPython applies to the whole handshake.)"""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)

    def connect(self) -> None:
        self.timeout = _remaining(self._deadline)
        super().connect()

    def send(self, data) -> None:
        if self.sock is not None:
            self.sock.settimeout(_remaining(self._deadline))
        super().send(data)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self.deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.ssl_context = ssl.create_default_context()  # what urllib uses by default

    def https_open(self, req):
        return self.do_open(
            functools.partial(_DeadlineHTTPSConnection, deadline=self.deadline),
            req,
            context=self.ssl_context,
        )


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    # Proxies from the environment are still honoured (urllib's ProxyHandler).
    return urllib.request.build_opener(
        _NoRedirects, _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
    )


def post(url: str, secret: str, notification: Notification, timeout: float = TIMEOUT_SECONDS):
    """POST the notification's stored body, signed, once, and wait at most ``timeout``
    seconds in all for the answer's status; never raises for network trouble."""
    body = notification.body.encode("utf-8")  # exactly the bytes that are signed
    try:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **signed_headers(notification, body, secret, time.time()),
            },
        )
        deadline = time.monotonic() + timeout
        with _opener(deadline).open(request, timeout=timeout) as response:
            return Answer(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return Answer(error.code)
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):  # while connecting or sending
            return Answer(None, f"no answer within {timeout:g} s")
        return Answer(None, _scrub(f"connection failed: {error.reason}", url, secret))
    except TimeoutError:  # while waiting for the answer
        return Answer(None, f"no answer within {timeout:g} s")
    except (OSError, http.client.HTTPException) as error:
        return Answer(
            None, _scrub(f"connection failed: {type(error).__name__}: {error}", url, secret)
        )
    except Exception as error:  # anything else: retried later, never a failed tick
        return Answer(None, _scrub(f"could not send: {type(error).__name__}: {error}", url, secret))


def _scrub(text: str, url: str, secret: str) -> str:
    # Exception texts do not normally hold either, but a log line must never show them.
    for part in sorted(secret.split(" "), key=len, reverse=True) if secret else ():
        if part:
            text = text.replace(part, "***")
    text = text.replace(url, redact_url(url))
    netloc = urllib.parse.urlsplit(url).netloc
    if "@" in netloc:  # settings refuse user info; should one slip through, not its password
        text = text.replace(netloc.rsplit("@", 1)[0], "***")
    return text


@dataclass(frozen=True)
class Outcome:
    notification: Notification
    result: str  # delivered | retry | abandoned | taken (another sender recorded it first)
    detail: str
    next_attempt_at: datetime | None = None


def deliver_one(
    engine: Engine,
    notification: Notification,
    url: str,
    secret: str,
    now: datetime,
    timeout: float = TIMEOUT_SECONDS,
) -> Outcome:
    """Send one leased notification, then record what came of it on its row (a short
    transaction of its own: none is held open while the receiver answers)."""
    attempts = notification.attempts + 1
    deadline = notification.created_at + RETRY_WINDOW
    if now >= deadline and notification.attempts == 0:
        # Written before the webhook was switched on, or while nothing delivered for a
        # day: an announcement that late would only mislead.
        detail = "not sent: older than the 24 h delivery window"
        with engine.begin() as conn:
            recorded = notifications.abandon(
                conn, notification.id, attempts=0, abandoned_at=now, last_error=detail
            )
        return Outcome(notification, "abandoned" if recorded else "taken", detail)
    answer = post(url, secret, notification, timeout)
    done_at = datetime.now(UTC)
    with engine.begin() as conn:
        if answer.delivered:
            recorded = notifications.mark_delivered(
                conn, notification.id, attempts=attempts, delivered_at=done_at
            )
            return Outcome(notification, "delivered" if recorded else "taken", answer.describe())
        if not answer.retryable or done_at >= deadline:
            detail = (
                f"refused by the receiver: {answer.describe()}"
                if not answer.retryable
                else f"gave up after {attempts} attempts in 24 h: {answer.describe()}"
            )
            recorded = notifications.abandon(
                conn, notification.id, attempts=attempts, abandoned_at=done_at, last_error=detail
            )
            return Outcome(notification, "abandoned" if recorded else "taken", detail)
        next_attempt_at = min(done_at + backoff(attempts), deadline)
        recorded = notifications.schedule_retry(
            conn,
            notification.id,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=answer.describe(),
        )
    return Outcome(
        notification, "retry" if recorded else "taken", answer.describe(), next_attempt_at
    )


# How long a sender holds a notification while it sends it: far longer than an attempt
# takes (at most TIMEOUT_SECONDS in all), so that only a sender that died mid-attempt
# lets another one try again, then.
LEASE = timedelta(minutes=5)


def deliver_due(
    engine: Engine,
    url: str,
    secret: str,
    *,
    limit: int = TICK_LIMIT,
    budget_seconds: float = TICK_BUDGET_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
    log: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Deliver due notifications, oldest first, until none is due, ``limit`` were tried or
    ``budget_seconds`` have passed. Each one is leased first (a short transaction that
    skips rows another sender holds, on PostgreSQL), so concurrent senders never send the
    same one, and no transaction stays open while the receiver answers."""
    started = time.monotonic()
    outcomes: list[Outcome] = []
    shown_url = redact_url(url)
    while len(outcomes) < limit and time.monotonic() - started < budget_seconds:
        with engine.begin() as conn:
            now = datetime.now(UTC)
            due = notifications.due(conn, now, 1, lock=True)
            if not due:
                break
            leased = notifications.lease(conn, due[0], until=now + LEASE)
        if not leased:
            continue  # another sender took it first
        outcome = deliver_one(engine, due[0], url, secret, now, timeout)
        outcomes.append(outcome)
        if log is not None:
            log(describe(outcome, shown_url))
    return outcomes


def describe(outcome: Outcome, shown_url: str) -> str:
    """One log line per attempt: which notification, where to (no query), what came of it."""
    n = outcome.notification
    line = (
        f"webhook {n.event} of export job {n.export_job_id} (delivery {n.id}) to {shown_url}, "
        f"attempt {n.attempts + 1}: {outcome.result} ({outcome.detail})"
    )
    if outcome.next_attempt_at is not None:
        wait = (outcome.next_attempt_at - datetime.now(UTC)).total_seconds()
        line += f", next attempt in {max(wait, 0):.0f} s"
    return line


def summary(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "no webhook notification due"
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    return "webhook notifications: " + ", ".join(f"{n} {what}" for what, n in counts.items())


class WebhookEndpoint(dg.ConfigurableResource):
    """Where completion notifications go and the key that signs them. The definitions pass
    both as EnvVars, so Dagster's UI shows the variables' names, never the secret (or a
    token in the URL)."""

    url: str
    secret: str


def webhook_resources(settings: Settings) -> dict:
    """The webhook resource when EXPORT_WEBHOOK_URL is set (settings validated both)."""
    if not settings.webhook_url:
        return {}
    return {
        "webhook": WebhookEndpoint(
            url=dg.EnvVar("EXPORT_WEBHOOK_URL"), secret=dg.EnvVar("EXPORT_WEBHOOK_SECRET")
        )
    }


def build_export_webhook_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    """export_webhook_sensor when EXPORT_WEBHOOK_URL is set, else nothing."""
    if not settings.webhook_url:
        return []

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=2,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Delivers the completion webhook (EXPORT_WEBHOOK_URL): a signed POST per export "
            "job that ends completed, failed or cancelled, from the export_notifications "
            "outbox, retried with backoff for 24 h. Never changes an export job."
        ),
    )
    def export_webhook_sensor(
        context: dg.SensorEvaluationContext, app_db: AppDatabase, webhook: WebhookEndpoint
    ) -> dg.SkipReason:
        outcomes = deliver_due(app_db.engine, webhook.url, webhook.secret, log=context.log.info)
        return dg.SkipReason(summary(outcomes))

    return [export_webhook_sensor]
