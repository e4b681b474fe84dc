"""The export endpoints: a module-level router, and the standalone service that mounts it.

The endpoints only read and write export_jobs rows (through requests.ExportRequests);
the Dagster pipeline does the exporting. What a route needs (the request API, the
calling user) comes through the dependencies in deps.py.
"""

import base64
import importlib.metadata
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from ...app_db.export_jobs import ExportJob
from ...app_db.job_status import JobStatus
from ...app_db.schema import IDEMPOTENCY_KEY_LENGTH
from ...settings import DEFAULTS, Settings
from ..requests import ExportRequests
from . import observability
from .auth import AuthSettings, TokenVerifier
from .body_guard import BodyGuard
from .deps import CurrentUser, Requests
from .problems import (
    COMMON_PROBLEMS,
    Problem,
    install_problem_handlers,
    problem_responses,
    serve_problems_as_problem_json,
)
from .schedules import router as schedule_router
from .schemas import (
    ExportJobCreateResponse,
    ExportJobResponse,
    ExportOptions,
    ExportQueryOptions,
)

# Defaults and bounds of the list's page size (`?limit=`).
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
# A running export asked to cancel ends within seconds (the cancel sensor's interval).
CANCEL_POLL_SECONDS = 5


def _no_store(response: Response) -> None:
    """Bodies of the API may carry signed links: no cache keeps them."""
    response.headers["Cache-Control"] = "no-store"


router = APIRouter(
    prefix="/api",
    tags=["exports"],
    responses=problem_responses(*COMMON_PROBLEMS),
    dependencies=[Depends(_no_store)],
)


def _refuse_repeated_query_parameters(request: Request) -> None:
    """`?compression=gzip&compression=none` would otherwise silently take the last value:
    422 validation_failed, naming the parameter and its values in `errors`."""
    given: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        given.setdefault(name, []).append(value)
    repeated = [
        {
            "type": "repeated_parameter",
            "loc": ["query", name],
            "msg": f"query parameter {name} is given {len(values)} times: give it once",
            "input": values,
        }
        for name, values in given.items()
        if len(values) > 1
    ]
    if repeated:
        raise RequestValidationError(repeated)


def _accepted(response: Response, job_id: uuid.UUID, retry_after_seconds: int) -> None:
    """A 202's headers: where the job is, and when polling it is first worth it."""
    response.headers["Location"] = f"/api/exports/{job_id}"
    response.headers["Retry-After"] = str(retry_after_seconds)


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_LENGTH,
        pattern=r"^[ -~]+$",
        description="1-255 printable ASCII characters (a UUID, say). The same key from the "
        "same user within 24 hours answers the first request's job again (one job, one run; "
        "`Idempotent-Replayed: true`) if it asked for the same campaign and options, and 409 "
        "`idempotency_key_reused` otherwise.",
    ),
]


def _initiate_export(
    api: ExportRequests,
    response: Response,
    campaign_id: uuid.UUID,
    user_id: uuid.UUID,
    options: ExportOptions | None,
    idempotency_key: str | None,
) -> ExportJobCreateResponse:
    options = options or ExportOptions()
    job, replayed = api.request_export_once(
        campaign_id, user_id, idempotency_key=idempotency_key, **options.model_dump()
    )
    _accepted(response, job.id, api.first_poll_seconds(job))
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return ExportJobCreateResponse(
        job_id=job.id,
        campaign_id=job.campaign_id,
        status=job.status,
        options=ExportOptions(**job.options),
        created_at=job.created_at,
        message=f"export requested; poll GET /api/exports/{job.id} for the download URL",
    )


ACCEPTED_HEADERS = {
    "Location": {
        "description": "The job: `/api/exports/{job_id}`.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds until polling the job is first worth it: 2, plus 3 for "
        "each export requested before it that has not ended, at most 60.",
        "schema": {"type": "integer"},
    },
    "Cache-Control": {"description": "`no-store`.", "schema": {"type": "string"}},
}
CREATED_HEADERS = {
    **ACCEPTED_HEADERS,
    "Idempotent-Replayed": {
        "description": "`true` when the answer is an earlier request's job, for the same "
        "`Idempotency-Key`.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
NO_STORE_HEADERS = {
    "Cache-Control": {
        "description": "`no-store`: the body may carry a signed download link.",
        "schema": {"type": "string"},
    }
}
CREATE_PROBLEMS = ("idempotency_key_reused", "rate_limited")


# GET as the app's client calls it (options as query parameters, each once; an unknown
# one is refused: ExportQueryOptions forbids extra fields); POST as it should be (options as
# an optional JSON body; none, or an empty body, means the defaults).
@router.get(
    "/campaigns/{campaign_id}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportJobCreateResponse,
    summary="Request an export of the campaign (options in the query)",
    description="Options as query parameters, each at most once: `bom` exactly `true` or "
    "`false`, `compression` `none` or `gzip`, `format`, `outcomes` comma-separated, "
    "`attempted_from`, `attempted_to`, `time_zone`. Any other parameter or value, or a "
    "repeated parameter, is 422 and nothing is recorded.",
    operation_id="createExportViaGet",
    responses={**problem_responses(*CREATE_PROBLEMS), 202: {"headers": CREATED_HEADERS}},
)
def initiate_export_get(
    campaign_id: uuid.UUID,
    user_id: CurrentUser,
    api: Requests,
    request: Request,
    response: Response,
    options: Annotated[ExportQueryOptions, Query()],
    idempotency_key: IdempotencyKey = None,
) -> ExportJobCreateResponse:
    _refuse_repeated_query_parameters(request)
    return _initiate_export(api, response, campaign_id, user_id, options.options(), idempotency_key)


@router.post(
    "/campaigns/{campaign_id}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportJobCreateResponse,
    summary="Request an export of the campaign",
    description="Options as an optional JSON body: `bom` a JSON boolean, `compression` "
    "`none` or `gzip`, `format`, `outcomes` a list, `attempted_from`, `attempted_to`, "
    '`time_zone`. Any other key or value (1, "true"), or any query parameter, is '
    "422 and nothing is recorded.",
    operation_id="createExport",
    responses={
        **problem_responses(*CREATE_PROBLEMS, "payload_too_large"),
        202: {"headers": CREATED_HEADERS},
    },
)
def initiate_export_post(
    campaign_id: uuid.UUID,
    user_id: CurrentUser,
    api: Requests,
    request: Request,
    response: Response,
    options: Annotated[ExportOptions | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> ExportJobCreateResponse:
    if request.query_params:
        # `POST ...?compression=gzip` would otherwise export a plain CSV without a word.
        names = sorted(set(request.query_params.keys()))
        detail = (
            f"query parameters {', '.join(names)} are not taken by POST: send the options as "
            'the JSON body, e.g. {"bom": true, "compression": "gzip"}'
        )
        errors = [
            {"loc": ["query", name], "msg": "not taken by POST", "type": "extra_forbidden"}
            for name in names
        ]
        raise Problem("validation_failed", detail, errors=errors)
    return _initiate_export(api, response, campaign_id, user_id, options, idempotency_key)


def _cursor_of(job: ExportJob) -> str:
    """Opaque to clients: the keyset (created_at, id) of a page's last job."""
    text = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _keyset_of(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = text.split("|")
        keyset = datetime.fromisoformat(created_at), uuid.UUID(job_id)
        if keyset[0].tzinfo is None:
            raise ValueError("no time zone")
        return keyset
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise Problem(
            "validation_failed",
            f"cursor {cursor[:80]!r} is not one this service gave: take the Link header's "
            "next URL as it is",
            errors=[{"loc": ["query", "cursor"], "msg": "not a cursor", "type": "value_error"}],
        ) from None


@router.get(
    "/campaigns/{campaign_id}/exports",
    response_model=list[ExportJobResponse],
    operation_id="listExports",
    responses={
        200: {
            "headers": {
                **NO_STORE_HEADERS,
                "Link": {
                    "description": 'The next page, `<URL>; rel="next"`, while there is one.',
                    "schema": {"type": "string"},
                },
            }
        }
    },
)
def list_exports(
    campaign_id: uuid.UUID,
    user_id: CurrentUser,
    api: Requests,
    request: Request,
    response: Response,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="Jobs per page, at most 200.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Where the page starts: only from the previous page's `Link` header.",
        ),
    ] = None,
) -> list[ExportJobResponse]:
    """The campaign's export jobs, newest first, a page at a time; the `Link` header names
    the next page while there is one."""
    _refuse_repeated_query_parameters(request)
    before = _keyset_of(cursor) if cursor is not None else None
    jobs = api.list_exports(campaign_id, user_id, limit=limit + 1, before=before)
    if len(jobs) > limit:
        jobs = jobs[:limit]
        following = request.url.include_query_params(limit=limit, cursor=_cursor_of(jobs[-1]))
        response.headers["Link"] = f'<{following}>; rel="next"'
    return [ExportJobResponse.of(job) for job in jobs]


@router.get(
    "/exports/{job_id}",
    response_model=ExportJobResponse,
    operation_id="getExport",
    responses={200: {"headers": NO_STORE_HEADERS}},
)
def get_export(job_id: uuid.UUID, user_id: CurrentUser, api: Requests) -> ExportJobResponse:
    """One export job: its status and, once completed, its download URL."""
    return ExportJobResponse.of(api.get_export(job_id, user_id))


@router.post(
    "/exports/{job_id}/refresh-url",
    response_model=ExportJobResponse,
    operation_id="refreshExportUrl",
    responses={
        **problem_responses("export_not_completed", "file_gone", "payload_too_large"),
        200: {"headers": NO_STORE_HEADERS},
    },
)
def refresh_url(job_id: uuid.UUID, user_id: CurrentUser, api: Requests) -> ExportJobResponse:
    """Re-sign a completed export's file with a fresh expiry."""
    return ExportJobResponse.of(api.refresh_download_url(job_id, user_id))


@router.post(
    "/exports/{job_id}/cancel",
    response_model=ExportJobResponse,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="cancelExport",
    responses={
        **problem_responses("already_ended", "payload_too_large"),
        202: {
            "headers": {
                **ACCEPTED_HEADERS,
                "Retry-After": {
                    "description": "Seconds until the job is worth reading again: 0 once "
                    f"`cancelled`, {CANCEL_POLL_SECONDS} while it is still `running`.",
                    "schema": {"type": "integer"},
                },
            }
        },
    },
)
def cancel_export(
    job_id: uuid.UUID, user_id: CurrentUser, api: Requests, response: Response
) -> ExportJobResponse:
    """Cancel an export: a pending one is `cancelled` at once; a running one shows
    `cancel_requested_at` and ends `cancelled` within seconds, its file deleted."""
    job = api.cancel_export(job_id, user_id)
    _accepted(response, job.id, 0 if job.status == JobStatus.CANCELLED else CANCEL_POLL_SECONDS)
    return ExportJobResponse.of(job)


def _options_route(methods: list[str]):
    allow = ", ".join([*methods, "OPTIONS"])

    def options() -> Response:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Allow": allow})

    return options


# OPTIONS names every method of a path (FastAPI alone answers it 405, naming one).
_methods_by_path: dict[str, list[str]] = {}
for _route in router.routes:
    _methods_by_path.setdefault(_route.path, []).extend(sorted(_route.methods))
for _path, _methods in _methods_by_path.items():
    router.add_api_route(
        _path.removeprefix(router.prefix),
        _options_route(sorted(set(_methods))),
        methods=["OPTIONS"],
        include_in_schema=False,
        status_code=status.HTTP_204_NO_CONTENT,
    )


def create_app(
    api: ExportRequests | None = None,
    verifier: TokenVerifier | None = None,
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The standalone service (`voicesurvey-exports serve`); by default configured from
    the environment, every setting validated before it listens. Tests and tools may hand
    in their own request API and verifier (and swap either later through
    `app.dependency_overrides`); with its own api, the body limit is the default unless
    given."""
    settings = Settings.from_env() if api is None else None
    if max_body_bytes is None:
        max_body_bytes = (
            settings.http_max_body_bytes
            if settings
            else int(DEFAULTS["EXPORT_HTTP_MAX_BODY_BYTES"])
        )
    app = FastAPI(
        title="voicesurvey-exports",
        version=importlib.metadata.version("voicesurvey-exports"),
        description="Campaign CSV exports (REQ-018): request, list, read, refresh and cancel.",
    )
    app.state.export_requests = api or ExportRequests.from_settings(settings)
    app.state.token_verifier = verifier or TokenVerifier(AuthSettings.from_env())
    app.include_router(router)
    app.include_router(schedule_router)
    install_problem_handlers(app)
    serve_problems_as_problem_json(app)
    # Outside every route: the token is checked, and the body's size bounded, before
    # FastAPI reads a body (it does so before it runs a route's dependencies).
    app.add_middleware(BodyGuard, max_body_bytes=max_body_bytes)
    # Last: its middleware wraps every other, so 401 and 413 answers are counted and
    # carry the request id too (docs/operations.md).
    observability.install(app, app.state.export_requests.engine)
    return app


def openapi_document() -> dict:
    """The service's OpenAPI document, built without any configuration."""
    unused = ExportRequests(engine=None, objects=None, access_policy="role")
    verifier = TokenVerifier(AuthSettings(issuer="-", audience="-", jwt_secret="-" * 32))
    return create_app(unused, verifier).openapi()
