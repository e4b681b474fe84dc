"""Every error answer as RFC 9457 problem details (`application/problem+json`).

Each answer carries `type`, `title`, `status`, `detail` (one line for a person) and
`code`: a stable snake_case name of the cause, one per row of PROBLEMS, that clients
branch on (the wording of `detail` may change, `code` does not). docs/http-api.md lists
them. The service's exceptions map to codes in SERVICE_ERRORS, in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from ...app_db.errors import AppDatabaseError
from ..requests import (
    ExportRequestError,
    FileGone,
    IdempotencyKeyReused,
    InvalidRequest,
    NotCancellable,
    NotCompleted,
    NotFound,
    PermissionDenied,
    RateLimited,
    StorageUnavailable,
)

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
# Names the problem; not meant to be fetched (docs/http-api.md describes each code).
TYPE_BASE = "https://voicesurvey.example/problems/"


@dataclass(frozen=True)
class ProblemKind:
    status: int
    title: str
    description: str


PROBLEMS: dict[str, ProblemKind] = {
    "unauthenticated": ProblemKind(
        401, "Authentication required", "No bearer token was sent (`WWW-Authenticate: Bearer`)."
    ),
    "invalid_token": ProblemKind(
        401,
        "Invalid bearer token",
        "The bearer token is malformed, expired, not yet valid or not ours "
        '(`WWW-Authenticate: Bearer error="invalid_token"`); the log says which check failed.',
    ),
    "unknown_user": ProblemKind(403, "Unknown user", "No app user has the token's subject."),
    "forbidden": ProblemKind(403, "Forbidden", "The user's role may not use exports."),
    "not_found": ProblemKind(
        404,
        "Not found",
        "No such campaign, export job or path (with EXPORT_ACCESS_POLICY=owner, also a "
        "campaign the user did not create, or a job of one).",
    ),
    "method_not_allowed": ProblemKind(
        405, "Method not allowed", "The path does not take it; `Allow` names those it takes."
    ),
    "export_not_completed": ProblemKind(
        409, "Export not completed", "Only a completed export has a download URL to refresh."
    ),
    "file_gone": ProblemKind(
        409,
        "File gone",
        "The completed export's file is no longer in S3 (retention, or deleted): request a new "
        "export.",
    ),
    "already_ended": ProblemKind(
        409, "Export already ended", "The export is completed, failed or cancelled already."
    ),
    "idempotency_key_reused": ProblemKind(
        409,
        "Idempotency key reused",
        "The Idempotency-Key was used in the last 24 h by the same user for a request with "
        "other options.",
    ),
    "payload_too_large": ProblemKind(
        413, "Payload too large", "The request body is over EXPORT_HTTP_MAX_BODY_BYTES."
    ),
    "validation_failed": ProblemKind(
        422,
        "Validation failed",
        "A malformed id, option, header, query parameter or body; `errors` lists each field "
        "(`loc`, `msg`, `type`).",
    ),
    "rate_limited": ProblemKind(
        429, "Too many requests", "Too many exports started lately; `Retry-After` says when."
    ),
    "internal_error": ProblemKind(500, "Internal server error", "A bug: the log has the trace."),
    "unavailable": ProblemKind(
        503,
        "Service unavailable",
        "The app database or S3 is unavailable: retry later. Nothing was recorded.",
    ),
}

# Every route of the API may answer these; each route adds its own.
COMMON_PROBLEMS = (
    "unauthenticated",
    "invalid_token",
    "unknown_user",
    "forbidden",
    "not_found",
    "validation_failed",
    "unavailable",
)

# The request API's refusals, most specific first.
SERVICE_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (NotCompleted, "export_not_completed"),
    (FileGone, "file_gone"),
    (NotCancellable, "already_ended"),
    (IdempotencyKeyReused, "idempotency_key_reused"),
    (RateLimited, "rate_limited"),
    (PermissionDenied, "forbidden"),
    (NotFound, "not_found"),
    (StorageUnavailable, "unavailable"),
    (InvalidRequest, "validation_failed"),
    (ExportRequestError, "validation_failed"),
)


def problem_body(code: str, detail: str, errors: list | None = None) -> dict:
    kind = PROBLEMS[code]
    body = {
        "type": TYPE_BASE + code,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_response(
    code: str, detail: str, *, headers: dict | None = None, errors: list | None = None
) -> JSONResponse:
    return JSONResponse(
        problem_body(code, detail, errors),
        PROBLEMS[code].status,
        headers=headers,
        media_type=MEDIA_TYPE,
    )


class Problem(Exception):
    """Raised by a route or dependency: answered as the problem `code`."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: dict | None = None,
        errors: list | None = None,
    ):
        super().__init__(detail)
        self.code, self.detail, self.headers, self.errors = code, detail, headers, errors

    def response(self) -> JSONResponse:
        return problem_response(self.code, self.detail, headers=self.headers, errors=self.errors)


def bearer_challenge(code: str) -> dict[str, str]:
    """RFC 6750's challenge: `error="invalid_token"` once a token was sent."""
    challenge = 'Bearer error="invalid_token"' if code == "invalid_token" else "Bearer"
    return {"WWW-Authenticate": challenge}


def unauthorized(code: str, detail: str) -> JSONResponse:
    """401 unauthenticated (no token) or invalid_token, with the challenge."""
    return problem_response(code, detail, headers=bearer_challenge(code))


def validation_errors(errors) -> list[dict]:
    """FastAPI's validation errors as `errors` items: loc, msg, type (and input if any)."""
    listed = []
    for error in errors:
        item = {"loc": list(error.get("loc", ())), "msg": error["msg"], "type": error["type"]}
        if "input" in error:
            item["input"] = error["input"]
        listed.append(item)
    return jsonable_encoder(listed)


def validation_detail(errors: list[dict]) -> str:
    """One line: each field and what is wrong with it."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more if parts else "the request is malformed"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application takes at the request's path."""
    methods = _methods_at(request.app.router.routes, {**request.scope, "method": "OPTIONS"})
    # As OPTIONS lists them: the path's own methods, then OPTIONS.
    return sorted(methods - {"OPTIONS"}) + sorted(methods & {"OPTIONS"})


def _methods_at(routes, scope: dict) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        match, child_scope = route.matches(scope)
        if match == Match.NONE:
            continue
        if getattr(route, "methods", None):
            methods |= route.methods
        else:  # an included router (FastAPI's wrapper around it) or a mount
            router = getattr(route, "original_router", route)
            methods |= _methods_at(getattr(router, "routes", ()), {**scope, **child_scope})
    return methods


def _service_error(request: Request, error: ExportRequestError) -> JSONResponse:
    code = next(code for kind, code in SERVICE_ERRORS if isinstance(error, kind))
    headers = None
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after_seconds)}
    if isinstance(error, StorageUnavailable):
        logger.warning("export API: S3 unavailable: %s", error)
    return problem_response(code, str(error), headers=headers)


def _database_error(request: Request, error: AppDatabaseError) -> JSONResponse:
    logger.warning("export API: app database unavailable: %s", error)
    return problem_response("unavailable", f"the app database is unavailable: {error}")


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = validation_errors(error.errors())
    return problem_response("validation_failed", validation_detail(errors), errors=errors)


def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    headers = dict(error.headers or {})
    if error.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}: use {headers['Allow']}",
            headers=headers,
        )
    if error.status_code == 400:
        # FastAPI's answer to a body it cannot parse at all (not UTF-8, say): malformed
        # input, as any other.
        errors = [{"loc": ["body"], "msg": str(error.detail), "type": "body_undecodable"}]
        return problem_response(
            "validation_failed",
            "the body cannot be read: send UTF-8 JSON (or no body)",
            headers=headers,
            errors=errors,
        )
    if error.status_code == 404:
        return problem_response("not_found", f"no such path: {request.url.path}", headers=headers)
    code = next((c for c, kind in PROBLEMS.items() if kind.status == error.status_code), None)
    if code is None:  # a status no code names: plain problem details with about:blank
        return JSONResponse(
            {"type": "about:blank", "title": str(error.detail), "status": error.status_code},
            error.status_code,
            headers=headers,
            media_type=MEDIA_TYPE,
        )
    return problem_response(code, str(error.detail), headers=headers)


def _problem(request: Request, error: Problem) -> JSONResponse:
    return error.response()


def _server_error(request: Request, error: Exception) -> JSONResponse:
    # Starlette logs the trace; the answer says nothing of the cause.
    return problem_response("internal_error", "the service failed; the cause is in its log")


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of the app's routes as problem details."""
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(ExportRequestError, _service_error)
    app.add_exception_handler(AppDatabaseError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)


def problem_responses(*codes: str) -> dict:
    """OpenAPI `responses` for the given codes: one entry per status, naming its codes."""
    from .schemas import ProblemDetails

    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(PROBLEMS[code].status, []).append(code)
    return {
        status: {
            "model": ProblemDetails,
            "description": " ".join(f"`{code}`: {PROBLEMS[code].description}" for code in listed),
        }
        for status, listed in sorted(by_status.items())
    }


def serve_problems_as_problem_json(app: FastAPI) -> None:
    """The OpenAPI document says `application/problem+json` for every 4xx and 5xx."""
    build = app.openapi

    def openapi() -> dict:
        document = build()
        for path in document["paths"].values():
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[0] in "45" and "application/json" in content:
                        response["content"] = {MEDIA_TYPE: content.pop("application/json")}
        return document

    app.openapi = openapi
