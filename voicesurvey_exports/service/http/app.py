"""The four export endpoints of the seed, as a router the app mounts and as a service.

The endpoints only read and write export_jobs rows (through requests.ExportRequests);
the Dagster pipeline does the exporting.
"""

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from ...app_db.errors import AppDatabaseError, safe_database_errors
from ...app_db.schema import users
from ...settings import DEFAULTS, Settings
from ..requests import (
    ExportRequests,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
)
from .auth import AuthSettings, InvalidToken, TokenVerifier
from .body_guard import INVALID_TOKEN_DETAIL, MISSING_TOKEN_DETAIL, BodyGuard
from .schemas import (
    ErrorResponse,
    ExportJobCreateResponse,
    ExportJobResponse,
    ExportOptions,
    ExportQueryOptions,
)

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)
ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
    403: {"model": ErrorResponse, "description": "the user may not use exports"},
    404: {
        "model": ErrorResponse,
        "description": "no such campaign or export job (with EXPORT_ACCESS_POLICY=owner, "
        "also one of a campaign the user did not create)",
    },
    503: {
        "model": ErrorResponse,
        "description": "the app database or S3 is unavailable; try again later",
    },
}


@contextlib.contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """Database and S3 outages answer 503 with a one-line detail (no links, no SQL values)."""
    try:
        yield
    except AppDatabaseError as error:
        logger.warning("export API: app database unavailable: %s", error)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the app database is unavailable: {error}"
        ) from None
    except StorageUnavailable as error:
        logger.warning("export API: S3 unavailable: %s", error)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None


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


def build_export_router(
    api: ExportRequests | None = None, verifier: TokenVerifier | None = None
) -> APIRouter:
    """The router; by default configured from the environment (see the README)."""
    api = api or ExportRequests.from_settings(Settings.from_env())
    verifier = verifier or TokenVerifier(AuthSettings.from_env())
    router = APIRouter(prefix="/api", tags=["exports"], responses=ERRORS)

    def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> uuid.UUID:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                MISSING_TOKEN_DETAIL,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            subject = verifier.subject(credentials.credentials)
        except InvalidToken:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                INVALID_TOKEN_DETAIL,
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        # The role comes from the database, never from the token.
        with (
            _unavailable_as_503(),
            safe_database_errors("looking up the token's user"),
            api.engine.connect() as conn,
        ):
            user_id = conn.execute(
                select(users.c.id).where(users.c.oidc_subject == subject)
            ).scalar_one_or_none()
        if user_id is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"no user with subject {subject!r}")
        return user_id

    User = Annotated[uuid.UUID, Depends(current_user)]

    def call(operation, *args, **options):
        try:
            with _unavailable_as_503():
                return operation(*args, **options)
        except PermissionDenied as error:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(error)) from None
        except NotFound as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
        except InvalidRequest as error:
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None

    def initiate_export(
        campaign_id: uuid.UUID, user_id: uuid.UUID, options: ExportOptions | None
    ) -> ExportJobCreateResponse:
        options = options or ExportOptions()
        job = call(api.request_export, campaign_id, user_id, **options.model_dump())
        return ExportJobCreateResponse(
            job_id=job.id,
            campaign_id=job.campaign_id,
            status=job.status,
            options=ExportOptions(**job.options),
            created_at=job.created_at,
            message=f"export requested; poll GET /api/exports/{job.id} for the download URL",
        )

    # GET as the app's client calls it (options as query parameters, each once; an unknown
    # one is refused: ExportQueryOptions forbids extra fields); POST as it should be (options as an
    # optional JSON body; none, or an empty body, means the defaults).
    def initiate_export_get(
        campaign_id: uuid.UUID,
        user_id: User,
        request: Request,
        options: Annotated[ExportQueryOptions, Query()],
    ) -> ExportJobCreateResponse:
        _refuse_repeated_query_parameters(request)
        return initiate_export(campaign_id, user_id, options.options())

    def initiate_export_post(
        campaign_id: uuid.UUID,
        user_id: User,
        request: Request,
        options: Annotated[ExportOptions | None, Body()] = None,
    ) -> ExportJobCreateResponse:
        if request.query_params:
            # `POST ...?compression=gzip` would otherwise export a plain CSV without a word.
            names = ", ".join(sorted(set(request.query_params.keys())))
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"query parameters {names} are not taken by POST: send the options as the "
                'JSON body, e.g. {"bom": true, "compression": "gzip"}',
            )
        return initiate_export(campaign_id, user_id, options)

    descriptions = {
        "GET": "Options as query parameters, each at most once: `bom` exactly `true` or "
        "`false`, `compression` `none` or `gzip`, `format`, `outcomes` comma-separated, "
        "`attempted_from`, `attempted_to`, `time_zone`. Any other parameter or value, or a "
        "repeated parameter, is 422 and nothing is recorded.",
        "POST": "Options as an optional JSON body: `bom` a JSON boolean, `compression` "
        "`none` or `gzip`, `format`, `outcomes` a list, `attempted_from`, `attempted_to`, "
        '`time_zone`. Any other key or value (1, "true"), or any query parameter, is '
        "422 and nothing is recorded.",
    }
    for method, endpoint in (("GET", initiate_export_get), ("POST", initiate_export_post)):
        router.add_api_route(
            "/campaigns/{campaign_id}/export",
            endpoint,
            methods=[method],
            status_code=status.HTTP_202_ACCEPTED,
            response_model=ExportJobCreateResponse,
            summary="Request a CSV export of the campaign",
            description=descriptions[method],
            operation_id=f"initiate_export_{method.lower()}",
        )

    @router.get("/campaigns/{campaign_id}/exports", response_model=list[ExportJobResponse])
    def list_exports(campaign_id: uuid.UUID, user_id: User) -> list[ExportJobResponse]:
        """The campaign's export jobs, newest first."""
        return [ExportJobResponse.of(job) for job in call(api.list_exports, campaign_id, user_id)]

    @router.get("/exports/{job_id}", response_model=ExportJobResponse)
    def get_export(job_id: uuid.UUID, user_id: User) -> ExportJobResponse:
        """One export job: its status and, once completed, its download URL."""
        return ExportJobResponse.of(call(api.get_export, job_id, user_id))

    @router.post(
        "/exports/{job_id}/refresh-url",
        response_model=ExportJobResponse,
        responses={
            409: {
                "model": ErrorResponse,
                "description": "the export is not completed, or its file no longer exists",
            }
        },
    )
    def refresh_url(job_id: uuid.UUID, user_id: User) -> ExportJobResponse:
        """Re-sign a completed export's file with a fresh expiry."""
        return ExportJobResponse.of(call(api.refresh_download_url, job_id, user_id))

    @router.post(
        "/exports/{job_id}/cancel",
        response_model=ExportJobResponse,
        status_code=status.HTTP_202_ACCEPTED,
        responses={
            409: {
                "model": ErrorResponse,
                "description": "the export has ended already (completed, failed or cancelled)",
            }
        },
    )
    def cancel_export(job_id: uuid.UUID, user_id: User) -> ExportJobResponse:
        """Cancel an export: a pending one is `cancelled` at once; a running one shows
        `cancel_requested_at` and ends `cancelled` within seconds, its file deleted."""
        return ExportJobResponse.of(call(api.cancel_export, job_id, user_id))

    return router


def create_app(
    api: ExportRequests | None = None,
    verifier: TokenVerifier | None = None,
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The standalone service (`voicesurvey-exports serve`); by default configured from
    the environment. With its own api, the body limit is the default unless given."""
    settings = Settings.from_env() if api is None else None
    api = api or ExportRequests.from_settings(settings)
    verifier = verifier or TokenVerifier(AuthSettings.from_env())
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
    app.include_router(build_export_router(api, verifier))
    # Outside every route: the token is checked, and the body's size bounded, before
    # FastAPI reads a body (it does so before it runs a route's dependencies).
    app.add_middleware(BodyGuard, verifier=verifier, max_body_bytes=max_body_bytes)

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    return app


def openapi_document() -> dict:
    """The service's OpenAPI document, built without any configuration."""
    unused = ExportRequests(engine=None, objects=None, access_policy="role")
    verifier = TokenVerifier(AuthSettings(issuer="-", audience="-", jwt_secret="-" * 32))
    return create_app(unused, verifier).openapi()
