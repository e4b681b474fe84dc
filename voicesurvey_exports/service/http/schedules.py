"""The recurring-export endpoints: a campaign's export schedules (create, list, read, delete)."""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ...app_db.export_schedules import ExportSchedule
from ..schedules import ExportSchedules
from .deps import CurrentUser, Requests
from .problems import COMMON_PROBLEMS, problem_responses
from .schemas import ExportOptions


class ExportScheduleCreate(BaseModel):
    """A recurring export of the campaign; an unknown key or a value of the wrong JSON
    type is refused (422), as is a bad cron or an unknown time zone."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cron: str = Field(
        description="Five fields, minute hour day-of-month month day-of-week (minute "
        'resolution), read as wall-clock time in `time_zone`: "0 6 * * *" is every day at 6.',
        examples=["0 6 * * *"],
    )
    time_zone: str = Field("UTC", description="IANA time zone name, e.g. Europe/Rome.")
    incremental: bool = Field(
        False,
        description="The first delivery holds every terminal contact; each later one only "
        "those whose contact row or survey response changed since the last completed one.",
    )
    options: ExportOptions = Field(
        default_factory=ExportOptions,
        description="The export options of every delivery; `time_zone`, when not given, "
        "is the schedule's own.",
    )


class ExportScheduleResponse(BaseModel):
    schedule_id: uuid.UUID
    campaign_id: uuid.UUID
    created_by_user_id: uuid.UUID
    cron: str
    time_zone: str
    options: ExportOptions
    incremental: bool
    enabled: bool
    disabled_reason: str | None = Field(
        None, description="Why the schedule stopped (its creator lost the role, ...)."
    )
    last_due_at: datetime | None = Field(
        None, description="The latest due time that made its export job."
    )
    created_at: datetime

    @classmethod
    def of(cls, schedule: ExportSchedule) -> "ExportScheduleResponse":
        return cls(
            schedule_id=schedule.id,
            campaign_id=schedule.campaign_id,
            created_by_user_id=schedule.created_by_user_id,
            cron=schedule.cron,
            time_zone=schedule.time_zone,
            options=ExportOptions(**schedule.shown_options),
            incremental=schedule.incremental,
            enabled=schedule.enabled,
            disabled_reason=schedule.disabled_reason,
            last_due_at=schedule.last_due_at,
            created_at=schedule.created_at,
        )


def export_schedules(api: Requests) -> ExportSchedules:
    return ExportSchedules(api)


Schedules = Annotated[ExportSchedules, Depends(export_schedules)]

# The service's refusals (PermissionDenied, NotFound, a bad cron, zone or option as
# InvalidRequest) are answered as problem details by the app's handlers (problems.py).
router = APIRouter(
    prefix="/api",
    tags=["export schedules"],
    responses=problem_responses(*COMMON_PROBLEMS),
)


@router.post(
    "/campaigns/{campaign_id}/export-schedules",
    response_model=ExportScheduleResponse,
    status_code=status.HTTP_201_CREATED,
    operation_id="createExportSchedule",
)
def create_export_schedule(
    campaign_id: uuid.UUID,
    user_id: CurrentUser,
    schedules: Schedules,
    response: Response,
    schedule: Annotated[ExportScheduleCreate, Body()],
) -> ExportScheduleResponse:
    """Export the campaign on a cron schedule: each due time becomes an export job.
    A bad cron, zone or option is 422 `validation_failed` and nothing is recorded."""
    options = schedule.options.model_dump(exclude_unset=True)
    created = schedules.create_schedule(
        campaign_id,
        user_id,
        cron=schedule.cron,
        time_zone=schedule.time_zone,
        incremental=schedule.incremental,
        # The files' zone is the schedule's unless the options name one; other options
        # not given take the defaults.
        file_time_zone=options.pop("time_zone", None),
        **options,
    )
    response.headers["Location"] = f"/api/export-schedules/{created.id}"
    return ExportScheduleResponse.of(created)


@router.get(
    "/campaigns/{campaign_id}/export-schedules",
    response_model=list[ExportScheduleResponse],
    operation_id="listExportSchedules",
)
def list_export_schedules(
    campaign_id: uuid.UUID, user_id: CurrentUser, schedules: Schedules
) -> list[ExportScheduleResponse]:
    """The campaign's export schedules, oldest first (deleted ones are not listed)."""
    found = schedules.list_schedules(campaign_id, user_id)
    return [ExportScheduleResponse.of(schedule) for schedule in found]


@router.get(
    "/export-schedules/{schedule_id}",
    response_model=ExportScheduleResponse,
    operation_id="getExportSchedule",
)
def get_export_schedule(
    schedule_id: uuid.UUID, user_id: CurrentUser, schedules: Schedules
) -> ExportScheduleResponse:
    """One export schedule."""
    return ExportScheduleResponse.of(schedules.get_schedule(schedule_id, user_id))


@router.delete(
    "/export-schedules/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="deleteExportSchedule",
)
def delete_export_schedule(
    schedule_id: uuid.UUID, user_id: CurrentUser, schedules: Schedules
) -> Response:
    """Delete the schedule: its due times make no export job from now on."""
    schedules.delete_schedule(schedule_id, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
