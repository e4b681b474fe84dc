"""The recurring-export endpoints: a campaign's export schedules (create, list, read, delete)."""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ...app_db.export_schedules import ExportSchedule
from ..requests import InvalidRequest, NotFound, PermissionDenied
from ..schedules import ExportSchedules
from .schemas import ErrorResponse, ExportOptions


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
        default_factory=ExportOptions, description="The export options of every delivery."
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
            options=ExportOptions(**schedule.options),
            incremental=schedule.incremental,
            enabled=schedule.enabled,
            disabled_reason=schedule.disabled_reason,
            last_due_at=schedule.last_due_at,
            created_at=schedule.created_at,
        )


def build_schedule_router(
    schedules: ExportSchedules, current_user, unavailable, responses: dict
) -> APIRouter:
    """The router, mounted by the app with its own pieces: ``current_user`` (the token's
    user), ``unavailable`` (outages as 503) and its common error ``responses``."""
    router = APIRouter(prefix="/api", tags=["export schedules"], responses=responses)
    User = Annotated[uuid.UUID, Depends(current_user)]

    def call(operation, *args, **options):
        try:
            with unavailable():
                return operation(*args, **options)
        except PermissionDenied as error:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(error)) from None
        except NotFound as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
        except InvalidRequest as error:  # a bad cron, zone or option: nothing recorded
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None

    @router.post(
        "/campaigns/{campaign_id}/export-schedules",
        response_model=ExportScheduleResponse,
        status_code=status.HTTP_201_CREATED,
        responses={422: {"model": ErrorResponse, "description": "a bad cron, zone or option"}},
    )
    def create_export_schedule(
        campaign_id: uuid.UUID,
        user_id: User,
        response: Response,
        schedule: Annotated[ExportScheduleCreate, Body()],
    ) -> ExportScheduleResponse:
        """Export the campaign on a cron schedule: each due time becomes an export job."""
        created = call(
            schedules.create_schedule,
            campaign_id,
            user_id,
            cron=schedule.cron,
            time_zone=schedule.time_zone,
            incremental=schedule.incremental,
            bom=schedule.options.bom,
            compression=schedule.options.compression,
        )
        response.headers["Location"] = f"/api/export-schedules/{created.id}"
        return ExportScheduleResponse.of(created)

    @router.get(
        "/campaigns/{campaign_id}/export-schedules",
        response_model=list[ExportScheduleResponse],
    )
    def list_export_schedules(
        campaign_id: uuid.UUID, user_id: User
    ) -> list[ExportScheduleResponse]:
        """The campaign's export schedules, oldest first (deleted ones are not listed)."""
        found = call(schedules.list_schedules, campaign_id, user_id)
        return [ExportScheduleResponse.of(schedule) for schedule in found]

    @router.get("/export-schedules/{schedule_id}", response_model=ExportScheduleResponse)
    def get_export_schedule(schedule_id: uuid.UUID, user_id: User) -> ExportScheduleResponse:
        """One export schedule."""
        return ExportScheduleResponse.of(call(schedules.get_schedule, schedule_id, user_id))

    @router.delete("/export-schedules/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
    def delete_export_schedule(schedule_id: uuid.UUID, user_id: User) -> Response:
        """Delete the schedule: its due times make no export job from now on."""
        call(schedules.delete_schedule, schedule_id, user_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
