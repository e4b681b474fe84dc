"""Bearer-token authentication: a JWT verified against a configured issuer, audience and key.

Production uses RS256 with the identity provider's JWKS (AUTH_JWKS_URL or
AUTH_JWKS_FILE); local use may set AUTH_JWT_SECRET (HS256). With no key configured
the service refuses to start, so it can never accept unsigned tokens.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt

from ...settings import SettingsError

REQUIRED_CLAIMS = ["exp", "sub", "iss", "aud"]
# Seconds of clock skew between the identity provider and this service allowed for
# exp, nbf and iat: a token that expired moments ago elsewhere is still accepted.
LEEWAY_SECONDS = 30

logger = logging.getLogger(__name__)


class InvalidToken(Exception):
    """The bearer token is malformed, expired or not ours.

    The message says which, for the service's log only: callers answer with a fixed
    message so that a client cannot learn which check its token failed.
    """


@dataclass(frozen=True)
class AuthSettings:
    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    jwt_secret: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuthSettings:
        env = os.environ if environ is None else environ
        settings = cls(
            issuer=env.get("AUTH_ISSUER", ""),
            audience=env.get("AUTH_AUDIENCE", ""),
            jwks_url=env.get("AUTH_JWKS_URL") or None,
            jwks_file=env.get("AUTH_JWKS_FILE") or None,
            jwt_secret=env.get("AUTH_JWT_SECRET") or None,
        )
        for name, value in (("AUTH_ISSUER", settings.issuer), ("AUTH_AUDIENCE", settings.audience)):
            if not value:
                raise SettingsError(f"{name} is not set: tokens are checked against it")
        keys = [k for k in (settings.jwks_url, settings.jwks_file, settings.jwt_secret) if k]
        if len(keys) != 1:
            raise SettingsError(
                "set exactly one of AUTH_JWKS_URL, AUTH_JWKS_FILE or AUTH_JWT_SECRET "
                f"(found {len(keys)}): the service never accepts unsigned tokens"
            )
        if settings.jwt_secret and len(settings.jwt_secret) < 32:
            raise SettingsError("AUTH_JWT_SECRET must be at least 32 characters")
        if settings.jwks_file and not Path(settings.jwks_file).is_file():
            raise SettingsError(f"AUTH_JWKS_FILE={settings.jwks_file!r} is not a readable file")
        return settings


class TokenVerifier:
    """Checks signature, expiry, not-before, issuer and audience; returns the subject."""

    def __init__(self, settings: AuthSettings):
        self.settings = settings
        self._jwks_client = jwt.PyJWKClient(settings.jwks_url) if settings.jwks_url else None
        self._jwk_set = (
            jwt.PyJWKSet.from_dict(json.loads(Path(settings.jwks_file).read_text()))
            if settings.jwks_file
            else None
        )

    def _key(self, token: str):
        if self.settings.jwt_secret:
            return self.settings.jwt_secret, ["HS256"]
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key, ["RS256"]
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwk_set.keys:
            if kid is None or key.key_id == kid:
                return key.key, ["RS256"]
        raise InvalidToken(f"no key with id {kid!r} in AUTH_JWKS_FILE")

    def subject(self, token: str) -> str:
        try:
            key, algorithms = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,  # never "none", never a mix of key types
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except (jwt.PyJWTError, InvalidToken) as error:
            reason = f"{type(error).__name__}: {error}"
            # %r: the kid comes from the unverified token, so no raw newlines in the log.
            logger.info("rejected bearer token (kid %r): %s", _unverified_kid(token), reason)
            raise InvalidToken(reason) from None
        return str(claims["sub"])


def _unverified_kid(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if kid is None else str(kid)[:100]
