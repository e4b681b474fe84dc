"""What the export routes need, declared once as FastAPI dependencies.

`create_app` puts the request API and the token verifier on `app.state` (built from the
settings unless given); tests swap them with `app.dependency_overrides`.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from ...app_db.errors import safe_database_errors
from ...app_db.schema import users
from ..requests import ExportRequests
from .auth import InvalidToken, TokenVerifier
from .body_guard import INVALID_TOKEN_DETAIL, MISSING_TOKEN_DETAIL
from .problems import Problem, bearer_challenge

_bearer = HTTPBearer(auto_error=False)


def export_requests(request: Request) -> ExportRequests:
    return request.app.state.export_requests


def token_verifier(request: Request) -> TokenVerifier:
    return request.app.state.token_verifier


Requests = Annotated[ExportRequests, Depends(export_requests)]
Verifier = Annotated[TokenVerifier, Depends(token_verifier)]


class Unauthorized(Problem):
    def __init__(self, code: str, detail: str):
        super().__init__(code, detail, headers=bearer_challenge(code))


def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api: Requests,
    verifier: Verifier,
) -> uuid.UUID:
    """The app user the bearer token names; the role comes from the database, never
    from the token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("unauthenticated", MISSING_TOKEN_DETAIL)
    try:
        subject = verifier.subject(credentials.credentials)
    except InvalidToken:
        raise Unauthorized("invalid_token", INVALID_TOKEN_DETAIL) from None
    # (An AppDatabaseError is answered 503 unavailable, as from any route.)
    with safe_database_errors("looking up the token's user"), api.engine.connect() as conn:
        user_id = conn.execute(
            select(users.c.id).where(users.c.oidc_subject == subject)
        ).scalar_one_or_none()
    if user_id is None:
        raise Problem("unknown_user", f"no user with subject {subject!r}")
    return user_id


CurrentUser = Annotated[uuid.UUID, Depends(current_user)]
