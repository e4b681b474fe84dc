"""Times as the app database holds them: UTC, always (SQLite hands back naive ones)."""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, datetime


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything this project stores is UTC.
    if value is None or value.tzinfo is not None:
        return value if value is None else value.astimezone(UTC)
    return value.replace(tzinfo=UTC)


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, with the microseconds when it has them (as the HTTP API
    and the CSV show them): "2026-11-16T09:49:55.123456Z", "2026-11-16T09:49:55Z"."""
    return as_utc(value).replace(tzinfo=None).isoformat() + "Z"


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.cache
def known_time_zones() -> frozenset[str]:
    """The IANA zone names this machine's zoneinfo knows (its tz database or tzdata)."""
    return frozenset(zoneinfo.available_timezones())


def is_known_time_zone(name: object) -> bool:
    return isinstance(name, str) and name in known_time_zones()
