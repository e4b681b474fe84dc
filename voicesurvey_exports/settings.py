"""Environment configuration, read and validated once.

The variable names and defaults are the seed spec's (REQ-018), plus
``AWS_ENDPOINT_URL`` for S3-compatible endpoints (moto, MinIO). Every
validation error is one line naming the variable, its value and the rule.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from .app_db.engine import DatabaseUrlError, sync_database_url

# S3 refuses presigned URLs valid for longer than 7 days.
MAX_URL_EXPIRATION_SECONDS = 7 * 24 * 3600
# export_jobs.s3_key is VARCHAR(500); the longest key is prefix +
# "<campaign uuid>/<job uuid>/<run uuid>.csv.gz" (117 chars, a gzip export's).
MAX_PREFIX_LENGTH = 500 - 117
# Matched with fullmatch: "$" would also accept a name followed by a newline.
_BUCKET_RULE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# int() also takes '1_000' and other scripts' digits ('١٢٣'); settings take ASCII digits only.
_ASCII_DIGITS = re.compile(r"[0-9]+")
# Who may see a campaign's exports: "role" (the seed's rule: every campaign manager and
# admin sees every campaign) or "owner" (a campaign manager sees only the campaigns they
# created; admins still see all).
ACCESS_POLICIES = ("role", "owner")
# Where runs keep the small outputs their ops hand each other (ids, paths, counts), which
# retries and re-execution load: "local" (the instance's local_artifact_storage: one
# machine) or "s3" (the export bucket under OP_OUTPUTS_S3_PREFIX: a run in any container).
IO_STORAGES = ("local", "s3")
OP_OUTPUTS_S3_PREFIX = "dagster/io"
LOG_FORMATS = ("text", "json")
# Each started export is a Dagster run: no "unlimited", 1000 a minute is far past any person.
MAX_EXPORT_REQUESTS_PER_MINUTE = 1000
# Shorter than plain dagster-daemon's 5 s sensor loop, with time for the tick's own work:
# a tick still running when the loop comes round is skipped until the next one.
MAX_SENSOR_WAIT_SECONDS = 4

DEFAULTS = {
    "S3_BUCKET_NAME": "voicesurvey-exports",
    "S3_EXPORT_PREFIX": "exports/",
    "EXPORT_URL_EXPIRATION_SECONDS": "3600",
    "AWS_REGION": "eu-central-1",
    "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
    "EXPORT_SENSOR_BATCH_SIZE": "50",
    # A request-sensor tick that finds nothing pending keeps looking this long: plain
    # dagster-daemon starts a tick at most every 5 s, so a tick that looks for 4 s of them
    # sees a new request within a quarter second instead of 2.5 s on average.
    "EXPORT_SENSOR_WAIT_SECONDS": "4",
    "EXPORT_RETENTION_DAYS": "30",
    "EXPORT_PENDING_ALERT_MINUTES": "15",
    "EXPORT_RUNNING_ALERT_MINUTES": "60",
    "EXPORT_ACCESS_POLICY": "role",
    "EXPORT_SPOOL_DIR": tempfile.gettempdir(),
    "EXPORT_HTTP_MAX_BODY_BYTES": str(64 * 1024),
    "EXPORT_IO_STORAGE": "local",
    # Exports one user may start per minute (docs/operations.md, "Rate limit"): a person
    # never reaches 10, a script looping without waiting is stopped within a minute.
    "EXPORT_REQUESTS_PER_MINUTE": "10",
    # The serve process's log lines: "text" or "json" (one JSON object per line).
    "LOG_FORMAT": "text",
}

# Every variable the pipeline and the service read (deploy configs pass each one on).
VARIABLES = (
    "DATABASE_URL",
    *DEFAULTS,
    "AWS_ENDPOINT_URL",
    "S3_SSE_KMS_KEY_ID",
    # The completion webhook (docs/webhooks.md): both unset turns it off.
    "EXPORT_WEBHOOK_URL",
    "EXPORT_WEBHOOK_SECRET",
)
# The HTTP service holds a request body whole in memory; the API's bodies are a few bytes.
MIN_HTTP_BODY_BYTES, MAX_HTTP_BODY_BYTES = 1024, 16 * 1024 * 1024
# The webhook's HMAC keys: long enough not to be guessed from signed bodies. A Standard
# Webhooks secret (standardwebhooks.com) is "whsec_" and the base64 of its key's bytes,
# which the standard wants 24-64 bytes long; a raw secret (the seed's) at least 16
# characters. At most a few at once: more than two is a rotation left half done.
MIN_WEBHOOK_SECRET_LENGTH = 16
WHSEC_PREFIX = "whsec_"
MIN_WHSEC_KEY_BYTES, MAX_WHSEC_KEY_BYTES = 24, 64
MAX_WEBHOOK_SECRETS = 5


class SettingsError(ValueError):
    """A configuration value breaks its rule; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline and the service are configured with. Build it with
    from_env: each default is written once, in DEFAULTS."""

    database_url: str
    s3_bucket_name: str
    s3_export_prefix: str
    url_ttl_seconds: int
    aws_region: str
    aws_endpoint_url: str | None
    sensor_interval_seconds: int
    sensor_batch_size: int
    sensor_wait_seconds: int
    spool_dir: str
    kms_key_id: str | None
    retention_days: int
    pending_alert_minutes: int
    running_alert_minutes: int
    export_access_policy: str
    # Largest request body the HTTP service reads (larger: 413, never read whole).
    http_max_body_bytes: int
    # "local" or "s3" (IO_STORAGES).
    io_storage: str = "local"
    # The completion webhook; None when EXPORT_WEBHOOK_URL is unset. The secret never
    # appears in a repr, an error or Dagster's UI.
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    # Exports one user may start in any 60 s, counted in the app database.
    export_requests_per_minute: int = int(DEFAULTS["EXPORT_REQUESTS_PER_MINUTE"])
    # "text" or "json" (LOG_FORMATS): the serve process's log lines.
    log_format: str = DEFAULTS["LOG_FORMAT"]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(DEFAULTS)
        env.update(os.environ if environ is None else environ)
        database_url = env.get("DATABASE_URL")
        if not database_url:
            raise SettingsError(
                "DATABASE_URL is not set: give the app database URL, "
                "e.g. postgresql://user@host/db or sqlite:///path/app.db"
            )
        try:  # the driver and TLS mode psycopg2 will use: refused at load, not at connect
            sync_database_url(database_url)
        except DatabaseUrlError as error:
            raise SettingsError(str(error)) from None
        return cls(
            database_url=database_url,
            s3_bucket_name=validate_bucket_name(env["S3_BUCKET_NAME"]),
            s3_export_prefix=validate_export_prefix(env["S3_EXPORT_PREFIX"]),
            url_ttl_seconds=parse_int_setting(
                "EXPORT_URL_EXPIRATION_SECONDS",
                env["EXPORT_URL_EXPIRATION_SECONDS"],
                1,
                MAX_URL_EXPIRATION_SECONDS,
                "S3's 7-day limit for presigned URLs",
            ),
            aws_region=env["AWS_REGION"],
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            sensor_interval_seconds=parse_int_setting(
                "EXPORT_SENSOR_INTERVAL_SECONDS", env["EXPORT_SENSOR_INTERVAL_SECONDS"], 1, 3600
            ),
            sensor_batch_size=parse_int_setting(
                "EXPORT_SENSOR_BATCH_SIZE", env["EXPORT_SENSOR_BATCH_SIZE"], 1, 1000
            ),
            sensor_wait_seconds=parse_int_setting(
                "EXPORT_SENSOR_WAIT_SECONDS",
                env["EXPORT_SENSOR_WAIT_SECONDS"],
                0,
                MAX_SENSOR_WAIT_SECONDS,
                "shorter than dagster-daemon's 5 s sensor loop, which skips a tick still running",
            ),
            spool_dir=validate_spool_dir(env["EXPORT_SPOOL_DIR"] or DEFAULTS["EXPORT_SPOOL_DIR"]),
            kms_key_id=env.get("S3_SSE_KMS_KEY_ID") or None,
            retention_days=parse_int_setting(
                "EXPORT_RETENTION_DAYS", env["EXPORT_RETENTION_DAYS"], 1, 3650
            ),
            pending_alert_minutes=parse_int_setting(
                "EXPORT_PENDING_ALERT_MINUTES", env["EXPORT_PENDING_ALERT_MINUTES"], 1, 10080
            ),
            running_alert_minutes=parse_int_setting(
                "EXPORT_RUNNING_ALERT_MINUTES", env["EXPORT_RUNNING_ALERT_MINUTES"], 1, 10080
            ),
            export_access_policy=parse_choice_setting(
                "EXPORT_ACCESS_POLICY", env["EXPORT_ACCESS_POLICY"], ACCESS_POLICIES
            ),
            http_max_body_bytes=parse_int_setting(
                "EXPORT_HTTP_MAX_BODY_BYTES",
                env["EXPORT_HTTP_MAX_BODY_BYTES"],
                MIN_HTTP_BODY_BYTES,
                MAX_HTTP_BODY_BYTES,
                "the service holds a body whole in memory",
            ),
            io_storage=parse_choice_setting(
                "EXPORT_IO_STORAGE", env["EXPORT_IO_STORAGE"], IO_STORAGES
            ),
            **webhook_settings(env.get("EXPORT_WEBHOOK_URL"), env.get("EXPORT_WEBHOOK_SECRET")),
            export_requests_per_minute=parse_int_setting(
                "EXPORT_REQUESTS_PER_MINUTE",
                env["EXPORT_REQUESTS_PER_MINUTE"],
                1,
                MAX_EXPORT_REQUESTS_PER_MINUTE,
                "exports one user may start in any 60 s; each is a Dagster run",
            ),
            log_format=parse_choice_setting("LOG_FORMAT", env["LOG_FORMAT"], LOG_FORMATS),
        )


def parse_int_setting(name: str, raw: str, low: int, high: int, why: str = "") -> int:
    """A whole number written with the ASCII digits 0-9 only, surrounding whitespace allowed.

    No sign (not even '+'), no '_' separators, no other scripts' digits: the value an
    operator reads in the manifest is exactly the number the service uses.
    """
    rule = f"must be a whole number (digits 0-9) of at least {low} and at most {high}"
    if why:
        rule += f" ({why})"
    digits = raw.strip()
    if not _ASCII_DIGITS.fullmatch(digits):
        raise SettingsError(f"{name}={raw!r} {rule}")
    # Length first: int() refuses over 4300 digits with a ValueError of its own.
    if len(digits.lstrip("0")) > len(str(high)) or not low <= int(digits) <= high:
        raise SettingsError(f"{name}={raw!r} {rule}")
    return int(digits)


def parse_choice_setting(name: str, raw: str, allowed: tuple[str, ...]) -> str:
    value = raw.strip()
    if value not in allowed:
        raise SettingsError(f"{name}={raw!r} must be one of: {', '.join(allowed)}")
    return value


def validate_spool_dir(path: str) -> str:
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        raise SettingsError(f"EXPORT_SPOOL_DIR={path!r} must be an existing, writable directory")
    return path


def validate_bucket_name(name: str) -> str:
    if not _BUCKET_RULE.fullmatch(name) or ".." in name:
        raise SettingsError(
            f"S3_BUCKET_NAME={name!r} must be a valid S3 bucket name: 3-63 characters, "
            "lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def validate_export_prefix(prefix: str) -> str:
    if not 1 <= len(prefix) <= MAX_PREFIX_LENGTH:
        raise SettingsError(
            f"S3_EXPORT_PREFIX={prefix!r} must be 1-{MAX_PREFIX_LENGTH} characters "
            "so that the object key fits export_jobs.s3_key (500 characters)"
        )
    if prefix.startswith("/"):
        raise SettingsError(f"S3_EXPORT_PREFIX={prefix!r} must not start with '/'")
    return prefix


def webhook_settings(url: str | None, secret: str | None) -> dict:
    """The webhook's URL and secret, validated; both None when no URL is set (a secret
    alone is ignored, so it can be stored ahead of switching the webhook on)."""
    if not url:
        return {"webhook_url": None, "webhook_secret": None}
    validate_webhook_url(url)
    if not secret:
        raise SettingsError(
            "EXPORT_WEBHOOK_SECRET is not set: EXPORT_WEBHOOK_URL needs it to sign each "
            f"notification (a whsec_ secret, or at least {MIN_WEBHOOK_SECRET_LENGTH} characters)"
        )
    if secret != secret.strip():
        # A secret file's trailing newline would sign with a key the app does not have.
        raise SettingsError(
            "EXPORT_WEBHOOK_SECRET (value not shown) must not start or end with whitespace"
        )
    webhook_signing_keys(secret)
    return {"webhook_url": url, "webhook_secret": secret}


def webhook_signing_keys(secret: str) -> list[bytes]:
    """The HMAC keys EXPORT_WEBHOOK_SECRET names, in its order: one or more secrets
    separated by spaces (several during a rotation; each signs every delivery).

    A Standard Webhooks secret is ``whsec_`` and the base64 of 24-64 random bytes; those
    bytes are the key. Any other secret is the seed's raw secret, used as its UTF-8 bytes
    (at least 16 characters): still accepted for one release (docs/webhooks.md). The
    secret's value is never shown in an error, not even in part: its position, its
    length and the rule only."""
    if any(ch.isspace() and ch != " " for ch in secret):
        raise SettingsError(
            "EXPORT_WEBHOOK_SECRET (value not shown) must separate its secrets with "
            "single spaces, without tabs or line breaks"
        )
    parts = secret.split(" ")
    if not 1 <= len(parts) <= MAX_WEBHOOK_SECRETS or "" in parts:
        raise SettingsError(
            f"EXPORT_WEBHOOK_SECRET (value not shown) must be 1-{MAX_WEBHOOK_SECRETS} "
            "secrets separated by single spaces"
        )
    keys = []
    for position, part in enumerate(parts, 1):
        which = "value not shown" + (
            f", secret {position} of {len(parts)}" if len(parts) > 1 else ""
        )
        if part.startswith(WHSEC_PREFIX):
            encoded = part[len(WHSEC_PREFIX) :]
            try:
                # Padding is optional, as the standardwebhooks libraries take it.
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except binascii.Error:
                key = b""
            if not MIN_WHSEC_KEY_BYTES <= len(key) <= MAX_WHSEC_KEY_BYTES:
                raise SettingsError(
                    f"EXPORT_WEBHOOK_SECRET ({which}) must be whsec_ followed by the base64 of "
                    f"{MIN_WHSEC_KEY_BYTES}-{MAX_WHSEC_KEY_BYTES} random bytes"
                )
        else:
            if len(part) < MIN_WEBHOOK_SECRET_LENGTH:
                raise SettingsError(
                    f"EXPORT_WEBHOOK_SECRET ({which}, {len(part)} characters) must be a whsec_ "
                    f"secret or at least {MIN_WEBHOOK_SECRET_LENGTH} characters"
                )
            key = part.encode("utf-8")
        keys.append(key)
    return keys


def validate_webhook_url(url: str) -> str:
    rule = (
        "must be an http:// or https:// URL with a host and no user info, in ASCII on one "
        "line without spaces"
    )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        raise SettingsError(f"EXPORT_WEBHOOK_URL={redact_url(url)!r} {rule}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        # urllib sends neither user info nor non-ASCII: it would fail every delivery (and
        # its error would show the password). A token belongs in the query, or use TLS.
        or "@" in parts.netloc
        or not url.isascii()
        or any(ch.isspace() or not ch.isprintable() for ch in url)
    ):
        raise SettingsError(f"EXPORT_WEBHOOK_URL={redact_url(url)!r} {rule}")
    return url


def redact_url(url: str) -> str:
    """The URL without what may carry a credential: user info, query and fragment."""
    head, marker = re.match(r"([^?#]*)([?#])?", url).groups()
    head = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@", r"\1***@", head)
    return head + ("?..." if marker else "")
