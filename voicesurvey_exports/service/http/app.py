"""The export endpoints: a module-level router, and the standalone service that mounts it.

The endpoints only read and write export_jobs rows (through requests.ExportRequests);
the Dagster pipeline does the exporting. What a route needs (the request API, the
calling user) comes through the dependencies in deps.py.
"""

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, FastAPI, Query, Request, status
from fastapi.exceptions import RequestValidationError

from ...settings import DEFAULTS, Settings
from ..requests import ExportRequests
from .auth import AuthSettings, TokenVerifier
from .body_guard import BodyGuard
from .deps import CurrentUser, Requests
from .problems import (
    Problem,
    install_problem_handlers,
    problem_responses,
    serve_problems_as_problem_json,
)
from .schemas import (
    ExportJobCreateResponse,
    ExportJobResponse,
    ExportOptions,
    ExportQueryOptions,
)

# Every route may answer these; each route adds its own below.
COMMON_PROBLEMS = (
    "unauthenticated",
    "invalid_token",
    "unknown_user",
    "forbidden",
    "not_found",
    "validation_failed",
    "unavailable",
)
router = APIRouter(prefix="/api", tags=["exports"], responses=problem_responses(*COMMON_PROBLEMS))


def _refuse_repeated_query_parameters(request: Request) -> None:
    """`?compression=gzip&compression=none` would otherwise silently take the last value:
    422, in FastAPI's validation-error shape, naming the parameter and its values."""
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


def _initiate_export(
    api: ExportRequests, campaign_id: uuid.UUID, user_id: uuid.UUID, options: ExportOptions | None
) -> ExportJobCreateResponse:
    options = options or ExportOptions()
    job = api.request_export(campaign_id, user_id, bom=options.bom, compression=options.compression)
    return ExportJobCreateResponse(
        job_id=job.id,
        campaign_id=job.campaign_id,
        status=job.status,
        options=ExportOptions(**job.options),
        created_at=job.created_at,
        message=f"export requested; poll GET /api/exports/{job.id} for the download URL",
    )


# GET as the app's client calls it (options as query parameters, each once; an unknown
# one is refused: ExportQueryOptions forbids extra fields); POST as it should be (options as
# an optional JSON body; none, or an empty body, means the defaults).
@router.get(
    "/campaigns/{campaign_id}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportJobCreateResponse,
    summary="Request a CSV export of the campaign",
    description="Options as query parameters, each at most once: `bom` exactly `true` or "
    "`false`, `compression` `none` or `gzip`. Any other parameter or value, or a "
    "repeated parameter, is 422 and nothing is recorded.",
    operation_id="initiate_export_get",
)
def initiate_export_get(
    campaign_id: uuid.UUID,
    user_id: CurrentUser,
    api: Requests,
    request: Request,
    options: Annotated[ExportQueryOptions, Query()],
) -> ExportJobCreateResponse:
    _refuse_repeated_query_parameters(request)
    return _initiate_export(api, campaign_id, user_id, options.options())


@router.post(
    "/campaigns/{campaign_id}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportJobCreateResponse,
    summary="Request a CSV export of the campaign",
    description="Options as an optional JSON body: `bom` a JSON boolean, `compression` "
    '`none` or `gzip`. Any other key or value (1, "true"), or any query parameter, is '
    "422 and nothing is recorded.",
    operation_id="initiate_export_post",
)
def initiate_export_post(
    campaign_id: uuid.UUID,
    user_id: CurrentUser,
    api: Requests,
    request: Request,
    options: Annotated[ExportOptions | None, Body()] = None,
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
    return _initiate_export(api, campaign_id, user_id, options)


@router.get("/campaigns/{campaign_id}/exports", response_model=list[ExportJobResponse])
def list_exports(
    campaign_id: uuid.UUID, user_id: CurrentUser, api: Requests
) -> list[ExportJobResponse]:
    """The campaign's export jobs, newest first."""
    return [ExportJobResponse.of(job) for job in api.list_exports(campaign_id, user_id)]


@router.get("/exports/{job_id}", response_model=ExportJobResponse)
def get_export(job_id: uuid.UUID, user_id: CurrentUser, api: Requests) -> ExportJobResponse:
    """One export job: its status and, once completed, its download URL."""
    return ExportJobResponse.of(api.get_export(job_id, user_id))


@router.post(
    "/exports/{job_id}/refresh-url",
    response_model=ExportJobResponse,
    responses=problem_responses("export_not_completed", "file_gone"),
)
def refresh_url(job_id: uuid.UUID, user_id: CurrentUser, api: Requests) -> ExportJobResponse:
    """Re-sign a completed export's file with a fresh expiry."""
    return ExportJobResponse.of(api.refresh_download_url(job_id, user_id))


@router.post(
    "/exports/{job_id}/cancel",
    response_model=ExportJobResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses("already_ended"),
)
def cancel_export(job_id: uuid.UUID, user_id: CurrentUser, api: Requests) -> ExportJobResponse:
    """Cancel an export: a pending one is `cancelled` at once; a running one shows
    `cancel_requested_at` and ends `cancelled` within seconds, its file deleted."""
    return ExportJobResponse.of(api.cancel_export(job_id, user_id))


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
        version="1.0.0",
        description="Campaign CSV exports (REQ-018): request, list, read, refresh and cancel.",
    )
    app.state.export_requests = api or ExportRequests.from_settings(settings)
    app.state.token_verifier = verifier or TokenVerifier(AuthSettings.from_env())
    app.include_router(router)
    install_problem_handlers(app)
    serve_problems_as_problem_json(app)
    # Outside every route: the token is checked, and the body's size bounded, before
    # FastAPI reads a body (it does so before it runs a route's dependencies).
    app.add_middleware(BodyGuard, max_body_bytes=max_body_bytes)

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    return app


def openapi_document() -> dict:
    """The service's OpenAPI document, built without any configuration."""
    unused = ExportRequests(engine=None, objects=None, access_policy="role")
    verifier = TokenVerifier(AuthSettings(issuer="-", audience="-", jwt_secret="-" * 32))
    return create_app(unused, verifier).openapi()
