"""Every request body, on every route: a valid bearer token before a byte of it is read,
and never more than EXPORT_HTTP_MAX_BODY_BYTES of it held.

FastAPI reads a route's whole body (to parse it) before it runs the route's dependencies,
the token check among them: without this guard, a 150 MB POST with no token was read into
memory (several copies of it) only to be answered 401.
"""

from __future__ import annotations

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import InvalidToken, TokenVerifier
from .problems import problem_response, unauthorized

MISSING_TOKEN_DETAIL = "a bearer token is required"
# One answer for every rejected token: which check failed (and the key id) is logged only.
INVALID_TOKEN_DETAIL = "invalid or expired bearer token"


def _too_large(detail: str) -> JSONResponse:
    return problem_response("payload_too_large", detail)


class BodyGuard:
    """Pure ASGI middleware. A request that announces a body (Content-Length other than 0,
    or any Transfer-Encoding) is answered 401 without reading it unless its bearer token
    verifies (no route takes a body without one); 413 at once if its Content-Length is over
    the limit; otherwise its body is read here, and 413 as soon as it passes the limit
    (chunked), else handed on whole. The server discards what a refused client still sends.
    Requests without a body go straight on: their routes check the token as always."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, verifier: TokenVerifier | None = None):
        # No verifier: the application's (app.state.token_verifier, as create_app sets it).
        self.app, self.verifier, self.max_body_bytes = app, verifier, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("content-length", "0").strip() == "0" and not headers.get(
            "transfer-encoding"
        ):
            await self.app(scope, receive, send)
            return
        verifier = self.verifier or scope["app"].state.token_verifier
        refusal = self._token_refusal(verifier, headers.get("authorization"))
        if refusal is None:
            refusal = self._declared_size_refusal(headers.get("content-length"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body = await self._read_body(receive)
        if isinstance(body, JSONResponse):
            await body(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _token_refusal(verifier: TokenVerifier, authorization: str | None) -> JSONResponse | None:
        # As the routes' HTTPBearer dependency reads the header.
        scheme, token = get_authorization_scheme_param(authorization)
        if not (authorization and scheme and token) or scheme.lower() != "bearer":
            return unauthorized("unauthenticated", MISSING_TOKEN_DETAIL)
        try:
            verifier.subject(token)  # logs why a token is rejected
        except InvalidToken:
            return unauthorized("invalid_token", INVALID_TOKEN_DETAIL)
        return None

    def _declared_size_refusal(self, content_length: str | None) -> JSONResponse | None:
        if content_length is None:
            return None
        digits = content_length.strip()
        # (The server refuses a malformed Content-Length before it gets here.)
        if digits.isdigit() and int(digits) > self.max_body_bytes:
            return _too_large(
                f"request body of {int(digits)} bytes is over the limit of "
                f"{self.max_body_bytes} bytes (EXPORT_HTTP_MAX_BODY_BYTES)"
            )
        return None

    async def _read_body(self, receive: Receive) -> bytes | JSONResponse | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return _too_large(
                    f"request body is over the limit of {self.max_body_bytes} bytes "
                    "(EXPORT_HTTP_MAX_BODY_BYTES)"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the server's own messages (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
