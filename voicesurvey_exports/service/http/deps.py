"""What the export routes need, declared once as FastAPI dependencies.

`create_app` puts the request API and the token verifier on `app.state` (built from the
settings unless given); tests swap them with `app.dependency_overrides`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from ...app_db.errors import AppDatabaseError, safe_database_errors
from ...app_db.schema import users
from ..requests import ExportRequests, StorageUnavailable
from .auth import InvalidToken, TokenVerifier
from .body_guard import INVALID_TOKEN_DETAIL, MISSING_TOKEN_DETAIL

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)


def export_requests(request: Request) -> ExportRequests:
    return request.app.state.export_requests


def token_verifier(request: Request) -> TokenVerifier:
    return request.app.state.token_verifier


Requests = Annotated[ExportRequests, Depends(export_requests)]
Verifier = Annotated[TokenVerifier, Depends(token_verifier)]


@contextlib.contextmanager
def unavailable_as_503() -> Iterator[None]:
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


def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api: Requests,
    verifier: Verifier,
) -> uuid.UUID:
    """The app user the bearer token names; the role comes from the database, never
    from the token."""
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
    with (
        unavailable_as_503(),
        safe_database_errors("looking up the token's user"),
        api.engine.connect() as conn,
    ):
        user_id = conn.execute(
            select(users.c.id).where(users.c.oidc_subject == subject)
        ).scalar_one_or_none()
    if user_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"no user with subject {subject!r}")
    return user_id


CurrentUser = Annotated[uuid.UUID, Depends(current_user)]
