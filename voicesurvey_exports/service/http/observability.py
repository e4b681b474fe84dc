"""What operators watch the service by (docs/operations.md): /healthz, /readyz, /metrics,
a request id on every answer and log line, and LOG_FORMAT=json.

- ``/healthz`` answers 200 while the process can answer at all (no database call): a
  liveness probe that restarts nothing when only the database is down.
- ``/readyz`` answers 200 only when the app database answers ``SELECT 1`` within
  READY_TIMEOUT_SECONDS, else 503: a readiness probe that takes the replica out of the
  load balancer meanwhile.
- ``/metrics`` is the Prometheus text format, from a registry of this app's own (never
  prometheus_client's global one, so that two apps in one process do not collide). The
  export gauges are read from the database at scrape time, so every replica reports the
  same truth. It carries counts, statuses and route templates only: no ids, no links, no
  user, so it needs no token (keep it on the scrapers' network all the same).
- ``X-Request-ID``: the client's value when it is a plain token of at most 128
  characters, else a new one; echoed on every answer (401s and 413s included) and set on
  every log line written while the request is served.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, func, select, text
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...app_db.errors import describe_database_error
from ...app_db.job_status import JobStatus
from ...app_db.schema import export_jobs, export_notifications
from ...app_db.times import as_utc

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and . _ : - only: the id goes into log lines and answers as it came.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
READY_TIMEOUT_SECONDS = 2.0
# Route labels are templates; a path no route matched is one label, whatever its text.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: a status read takes milliseconds, a request with S3 up to a few seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def install(app: FastAPI, engine: Engine) -> CollectorRegistry:
    """Add the three endpoints and the request-id and metrics middleware to the app (call
    it last: the middleware must wrap every other, so that their answers are counted and
    carry the id). Returns the app's registry."""
    registry = CollectorRegistry()
    registry.register(ExportJobsCollector(engine))
    requests_total = Counter(
        "voicesurvey_http_requests",
        "HTTP requests answered, by method, route template and status",
        ["method", "route", "status"],
        registry=registry,
    )
    duration = Histogram(
        "voicesurvey_http_request_duration_seconds",
        "Time from a request's arrival to the end of its answer, by method and route template",
        ["method", "route"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(
                run_in_threadpool(_select_one, engine), timeout=READY_TIMEOUT_SECONDS
            )
        except TimeoutError:
            return _not_ready(f"no answer within {READY_TIMEOUT_SECONDS:g} s")
        except Exception as error:  # any failure to answer is "not ready", in one line
            return _not_ready(describe_database_error(error))
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestObservation, requests_total=requests_total, duration=duration)
    return registry


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _not_ready(reason: str) -> JSONResponse:
    logger.warning("not ready: the app database does not answer: %s", reason)
    return JSONResponse(
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "code": "unavailable",
            "detail": f"the app database does not answer: {reason}",
        },
        503,
        media_type="application/problem+json",
    )


class ExportJobsCollector:
    """The export gauges, read from the app database at each scrape. With the database
    down the scrape still answers: voicesurvey_app_database_up is 0 and the gauges that
    need it are left out (an alert on them then fires on absent(), not on a stale 0)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def describe(self):
        return []  # no database call at registration: read only at scrape time

    def collect(self):
        up = GaugeMetricFamily(
            "voicesurvey_app_database_up", "1 if the app database answered this scrape"
        )
        try:
            with self.engine.connect() as conn:
                gauges = list(_export_gauges(conn))
        except Exception as error:
            logger.warning("metrics: the app database does not answer: %s", _one_line(error))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from gauges


def _export_gauges(conn):
    jobs = GaugeMetricFamily(
        "voicesurvey_export_jobs", "Export jobs in the app database, by status", labels=["status"]
    )
    counts = dict(
        conn.execute(
            select(export_jobs.c.status, func.count()).group_by(export_jobs.c.status)
        ).all()
    )
    for status in JobStatus:
        jobs.add_metric([status.value], counts.get(status.value, 0))
    yield jobs

    now, oldest = conn.execute(
        select(func.now(), func.min(export_jobs.c.created_at)).where(
            export_jobs.c.status == JobStatus.PENDING
        )
    ).one()
    age = 0.0 if oldest is None else (as_utc(_as_datetime(now)) - as_utc(oldest)).total_seconds()
    yield GaugeMetricFamily(
        "voicesurvey_export_oldest_pending_seconds",
        "Age of the oldest export job still pending (0 when none is): how long a request "
        "has waited for a run",
        value=max(age, 0.0),
    )

    backlog = conn.execute(
        select(func.count()).where(
            export_notifications.c.delivered_at.is_(None),
            export_notifications.c.abandoned_at.is_(None),
        )
    ).scalar_one()
    yield GaugeMetricFamily(
        "voicesurvey_webhook_backlog",
        "Completion webhook notifications neither delivered nor abandoned yet",
        value=backlog,
    )


def _as_datetime(value) -> datetime:
    # SQLite's CURRENT_TIMESTAMP comes back as text.
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def _one_line(error: BaseException) -> str:
    return describe_database_error(error) if hasattr(error, "orig") else type(error).__name__


class RequestObservation:
    """Pure ASGI middleware: the request id (taken or made, echoed, in the log context)
    and the request's count and duration under its route template."""

    def __init__(self, app: ASGIApp, requests_total: Counter, duration: Histogram):
        self.app, self.requests_total, self.duration = app, requests_total, duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        rid = given if given is not None and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500  # what the server answers should the app fail before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.requests_total.labels(method, route, str(status)).inc()
            self.duration.labels(method, route).observe(time.perf_counter() - started)
            request_id.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the id of the request being served, else None (and
    ``record.request_id_text``, the same or "-", for text lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.request_id_text = record.request_id or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (ISO 8601 UTC), level, logger, message,
    request_id, and the traceback (as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_config(log_format: str) -> dict:
    """The logging configuration of the serve process (uvicorn's log_config): every line
    on stderr, with the request id; "json" one JSON object per line, "text" plain lines."""
    text_format = "%(asctime)s %(levelname)s %(name)s [%(request_id_text)s] %(message)s"
    formatter = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": text_format}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": "INFO"},
        "loggers": {
            # uvicorn's own handlers would print its lines a second time, unformatted.
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
