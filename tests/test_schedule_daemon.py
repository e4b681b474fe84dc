"""A recurring export with the real daemon: an every-minute incremental schedule made over
HTTP delivers every terminal contact, then, across a daemon restart, exactly the contact
that changed; each due time makes one job; once deleted it makes no more. Minutes pass in
real time (3-4 min): under `soak`."""

import csv
import io
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import select, update

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import contacts, export_jobs

from .conftest import AppData
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token

pytestmark = [pytest.mark.soak, pytest.mark.e2e, pytest.mark.postgres]

BUCKET = "schedule-exports"


@pytest.fixture
def stack(stack_databases, tmp_path):
    settings = {
        **stack_databases("schedules"),
        "AWS_REGION": "eu-central-1",
        "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWT_SECRET": SECRET,
    }
    with local_services.local_stack(
        tmp_path, settings, bucket=BUCKET, webserver=False, http_api=True
    ) as stack:
        yield stack


def deliveries(app: AppData, schedule_id: str) -> list[dict]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            select(export_jobs)
            .where(export_jobs.c.schedule_id == schedule_id)
            .order_by(export_jobs.c.due_at)
        )
        return [dict(row._mapping) for row in rows]


def finished_delivery(app: AppData, schedule_id: str, number: int) -> dict:
    def finished():
        made = deliveries(app, schedule_id)
        if len(made) >= number and made[number - 1]["status"] in ("completed", "failed"):
            return made[number - 1]
        return None

    job = processes.wait_for(finished, 200, f"delivery {number} of the schedule", interval=1)
    assert job["status"] == "completed", job["error_message"]
    return job


def delivered_contacts(job: dict) -> list[str]:
    body = requests.get(job["download_url"], timeout=30).content.decode("utf-8")
    return sorted(row["contact_id"] for row in csv.DictReader(io.StringIO(body, newline="")))


def restart_daemon(stack) -> None:
    processes.stop_all([stack.daemon])
    stack.processes.remove(stack.daemon)
    [stack.daemon] = local_services.start_dagster(
        stack.home, stack.env, stack.workspace_dir, daemon=stack.instance.daemon
    )
    stack.processes.append(stack.daemon)


def test_every_minute_schedule_delivers_all_then_what_changed_across_a_restart(stack):
    app = AppData(get_engine(stack.env["DATABASE_URL"]))
    manager = app.user("campaign_manager")
    campaign = app.campaign("Recurring campaign")
    ended = sorted(str(app.contact(campaign, state)) for state in ("completed", "refused"))
    recalled = app.contact(campaign, "pending")
    headers = {"Authorization": f"Bearer {token(oidc_subject(app, manager))}"}
    created = requests.post(
        f"{stack.api}/api/campaigns/{campaign}/export-schedules",
        headers=headers,
        json={"cron": "* * * * *", "incremental": True},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    schedule_id = created.json()["schedule_id"]

    first = finished_delivery(app, schedule_id, 1)
    assert delivered_contacts(first) == ended
    assert first["changed_since"] is None and first["requested_by_user_id"] == manager

    restart_daemon(stack)
    changed_at = datetime.now(UTC)
    with app.engine.begin() as conn:  # a re-call reaches the contact
        conn.execute(
            update(contacts)
            .where(contacts.c.id == recalled)
            .values(state="completed", updated_at=changed_at)
        )
    # The deliveries after the first, up to one whose due time is after the change (an
    # earlier one may have run before it): together they hold the contact, once.
    later, number = [], 2
    while not later or later[-1]["due_at"] <= changed_at:
        later.append(finished_delivery(app, schedule_id, number))
        number += 1
    assert [c for job in later for c in delivered_contacts(job)] == [str(recalled)]
    windows = [first, *later]
    for previous, job in zip(windows, windows[1:], strict=False):
        assert job["changed_since"] == previous["snapshot_at"]

    location = stack.api + created.headers["location"]
    deleted = requests.delete(location, headers=headers, timeout=10)
    assert deleted.status_code == 204
    made = deliveries(app, schedule_id)
    # One job per due time, each a minute after the last.
    due = [job["due_at"] for job in made]
    assert len(set(due)) == len(due)
    assert all(later.second == 0 for later in due)
    # No job after the deletion: wait past the next due time and a sensor tick or two.
    now = datetime.now(UTC)
    processes.wait_for(
        lambda: (datetime.now(UTC) - now).total_seconds() > 60 - now.second + 35,
        120,
        "the next due time to pass",
        interval=1,
    )
    assert len(deliveries(app, schedule_id)) == len(made)
