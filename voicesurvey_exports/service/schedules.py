"""Recurring exports: create, list and delete a campaign's export schedules.

The same roles and access policy as the one-off requests (ExportRequests' own checks):
viewers and unknown users are refused, and under the "owner" policy a campaign manager
sees only the schedules of campaigns they created. A refused call records nothing.
The pipeline's schedules sensor turns each due time into an ordinary export job.
"""

from __future__ import annotations

import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from croniter import croniter
from sqlalchemy import Connection

from ..app_db import export_schedules
from ..app_db.export_schedules import ExportSchedule
from ..app_db.times import iso_utc
from .requests import (
    ExportRequestError,
    ExportRequests,
    FileOptions,
    InvalidRequest,
    NotFound,
    check_named_options,
    parse_uuid,
)

CRON_FIELDS = 5


def _stored_options(options: FileOptions) -> dict:
    """The checked options as the schedule's JSON keeps them (the HTTP model's shape)."""
    return {
        "bom": options.bom,
        "compression": options.compression,
        "format": options.format,
        "outcomes": None if options.outcomes is None else list(options.outcomes),
        "attempted_from": None
        if options.attempted_from is None
        else iso_utc(options.attempted_from),
        "attempted_to": None if options.attempted_to is None else iso_utc(options.attempted_to),
        "time_zone": options.time_zone,
    }


def check_cron(cron: object) -> str:
    """Five fields (minute hour day-of-month month day-of-week), minute resolution."""
    if not isinstance(cron, str) or len(cron.split()) != CRON_FIELDS:
        raise InvalidRequest(
            f"cron {cron!r} must have five fields: minute hour day-of-month month day-of-week"
        )
    cron = " ".join(cron.split())
    if not croniter.is_valid(cron):
        raise InvalidRequest(f"cron {cron!r} is not a valid cron expression")
    return cron


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_time_zone(time_zone: object) -> str:
    if not isinstance(time_zone, str) or time_zone not in _known_zones():
        raise InvalidRequest(
            f"time zone {time_zone!r} is not an IANA time zone name (e.g. Europe/Rome, UTC)"
        )
    return time_zone


def latest_due_time(cron: str, time_zone: str, now: datetime) -> datetime:
    """The schedule's latest due time at or before ``now`` (minute resolution), in UTC;
    the cron is read as wall-clock time in the zone."""
    local_now = now.astimezone(zoneinfo.ZoneInfo(time_zone))
    # get_prev is strictly before its start: start a moment after now's minute.
    start = local_now.replace(second=59, microsecond=999_999)
    return croniter(cron, start).get_prev(datetime).astimezone(UTC)


@dataclass
class ExportSchedules:
    """The schedule API; the CLI, the HTTP API and the schedules sensor use it."""

    requests: ExportRequests

    def create_schedule(
        self,
        campaign_id: str | uuid.UUID,
        user_id: str | uuid.UUID,
        *,
        cron: str,
        time_zone: str = "UTC",
        incremental: bool = False,
        file_time_zone: str | None = None,
        **options: object,
    ) -> ExportSchedule:
        """A recurring export of the campaign. ``options`` are a request's (check_options)
        but its time zone: the files' zone is the schedule's ``time_zone`` unless
        ``file_time_zone`` (HTTP's ``options.time_zone``) names another."""
        campaign_id = parse_uuid(campaign_id, "campaign id")
        user_id = parse_uuid(user_id, "user id")
        cron = check_cron(cron)
        time_zone = check_time_zone(time_zone)
        if not isinstance(incremental, bool):
            raise InvalidRequest(f"incremental {incremental!r} must be true or false")
        options["time_zone"] = file_time_zone or time_zone
        checked = check_named_options(options)
        api = self.requests
        with api.database("recording the export schedule", write=True) as conn:
            role = api.authorize(conn, user_id)
            api.campaign(conn, campaign_id, user_id, role)
            return export_schedules.insert_schedule(
                conn,
                campaign_id,
                user_id,
                cron=cron,
                time_zone=time_zone,
                options=_stored_options(checked),
                incremental=incremental,
            )

    def list_schedules(
        self, campaign_id: str | uuid.UUID, user_id: str | uuid.UUID
    ) -> list[ExportSchedule]:
        campaign_id = parse_uuid(campaign_id, "campaign id")
        user_id = parse_uuid(user_id, "user id")
        api = self.requests
        with api.database("listing export schedules") as conn:
            role = api.authorize(conn, user_id)
            api.campaign(conn, campaign_id, user_id, role)
            return export_schedules.list_schedules(conn, campaign_id)

    def get_schedule(
        self, schedule_id: str | uuid.UUID, user_id: str | uuid.UUID
    ) -> ExportSchedule:
        schedule_id = parse_uuid(schedule_id, "export schedule id")
        user_id = parse_uuid(user_id, "user id")
        with self.requests.database("reading the export schedule") as conn:
            return self._schedule(conn, schedule_id, user_id)

    def delete_schedule(self, schedule_id: str | uuid.UUID, user_id: str | uuid.UUID) -> None:
        """Delete the schedule: its due times make no job from now on."""
        schedule_id = parse_uuid(schedule_id, "export schedule id")
        user_id = parse_uuid(user_id, "user id")
        with self.requests.database("deleting the export schedule", write=True) as conn:
            self._schedule(conn, schedule_id, user_id)
            export_schedules.delete_schedule(conn, schedule_id)

    def _schedule(
        self, conn: Connection, schedule_id: uuid.UUID, user_id: uuid.UUID
    ) -> ExportSchedule:
        """The schedule, if the user may see it; as ExportRequests answers for a job."""
        api = self.requests
        role = api.authorize(conn, user_id)
        schedule = export_schedules.get_schedule(conn, schedule_id)
        missing = f"export schedule {schedule_id} does not exist"
        if api.owners_only(role):
            missing += " or is not of one of your campaigns"
        if schedule is None:
            raise NotFound(missing)
        try:
            api.campaign(conn, schedule.campaign_id, user_id, role)
        except NotFound:
            if not api.owners_only(role):
                raise
            # The same answer as for no such schedule: ids cannot be probed.
            raise NotFound(missing) from None
        return schedule

    def refusal(self, conn: Connection, schedule: ExportSchedule) -> str | None:
        """Why the schedule's creator may no longer have its campaign exported (lost the
        role, the campaign is gone or no longer theirs), in one line; None when they may."""
        api = self.requests
        try:
            role = api.authorize(conn, schedule.created_by_user_id)
            api.campaign(conn, schedule.campaign_id, schedule.created_by_user_id, role)
        except ExportRequestError as error:
            return f"export schedule {schedule.id} can no longer run: {error}"
        return None
