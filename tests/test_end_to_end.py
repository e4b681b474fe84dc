"""The whole flow with real processes: dagster-daemon and dagster-webserver on the root
dagster.yaml (PostgreSQL instance storage), the app database on PostgreSQL, and a moto
S3 server on loopback. URLs are plain postgresql://, as operators write them."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
import requests
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.export_file.csv_format import CSV_COLUMNS

from .conftest import AppData
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BUCKET = "e2e-exports"
ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'


@pytest.fixture(scope="module")
def stack(stack_databases, tmp_path_factory):
    """moto server, dagster-daemon, dagster-webserver and the HTTP API, as separate process
    groups."""
    settings = {
        **stack_databases("e2e"),
        "AWS_REGION": "eu-central-1",
        "EXPORT_SENSOR_INTERVAL_SECONDS": "1",
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWT_SECRET": SECRET,
    }
    home = tmp_path_factory.mktemp("dagster_home")
    with local_services.local_stack(home, settings, bucket=BUCKET, http_api=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def app(stack) -> AppData:
    return AppData(get_engine(stack.env["DATABASE_URL"]))


def job_status(app: AppData, job_id) -> str | None:
    row = app.job_row(job_id)
    return row["status"] if row["status"] in ("completed", "failed") else None


def database_rows(app: AppData, campaign_id) -> list[list[str]]:
    """The expected CSV body, computed straight from the tables with SQL."""
    with app.engine.connect() as conn:
        rows = conn.execute(
            text("""
            SELECT c.campaign_id::text, c.id::text, coalesce(c.external_contact_id, ''),
                   c.state::text, c.attempts_count::text,
                   coalesce(to_char(c.last_attempt_at AT TIME ZONE 'UTC', :iso), ''),
                   coalesce(to_char(r.completed_at AT TIME ZONE 'UTC', :iso), ''),
                   coalesce(r.q1_answer, ''), coalesce(r.q2_answer, ''), coalesce(r.q3_answer, '')
            FROM contacts c LEFT JOIN survey_responses r ON r.contact_id = c.id
            WHERE c.campaign_id = :campaign
              AND c.state IN ('completed', 'refused', 'not_reached', 'excluded')
            ORDER BY c.id"""),
            {"campaign": campaign_id, "iso": ISO_UTC},
        ).all()
    guard = ("=", "+", "-", "@", "\t", "\r", "\n")
    return [
        [
            ("'" + cell if i in (2, 7, 8, 9) and cell.startswith(guard) else cell)
            for i, cell in enumerate(row)
        ]
        for row in rows
    ]


def test_pending_request_becomes_a_downloadable_csv(app):
    manager = app.user("campaign_manager")
    campaign = app.campaign("Sondaggio clienti — Primavera")
    answers = ['Sì, "ottimo"', "Zeile 1\nZeile 2", '=HYPERLINK("x")', "👍 très bien", None]
    for i in range(40):
        state = ("completed", "refused", "not_reached", "excluded", "pending", "in_progress")[i % 6]
        contact = app.contact(campaign, state, external_contact_id=f"crm-{i}" if i % 7 else "+39")
        if state == "completed":
            app.response(
                contact, campaign, answers[i % 5], answers[(i + 1) % 5], answers[(i + 2) % 5]
            )
    job_id = uuid.uuid4()
    with app.engine.begin() as conn:  # exactly what the app does
        conn.execute(
            text(
                "INSERT INTO export_jobs (id, campaign_id, requested_by_user_id, status) "
                "VALUES (:id, :campaign, :user, 'pending')"
            ),
            {"id": job_id, "campaign": campaign, "user": manager},
        )

    processes.wait_for(lambda: job_status(app, job_id), 180, "the export job to finish")

    job = app.job_row(job_id)
    assert job["status"] == "completed", job["error_message"]
    response = requests.get(job["download_url"], timeout=30)
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    assert ".csv" in response.headers["Content-Disposition"]
    parsed = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert parsed[0] == list(CSV_COLUMNS)
    expected = database_rows(app, campaign)
    assert len(expected) == job["total_records"] > 0
    assert parsed[1:] == expected


def test_backfill_of_fifty_campaigns_gives_fifty_completed_jobs(stack, app):
    campaigns = [str(app.campaign(f"Backfill {i}")) for i in range(50)]
    for campaign in campaigns:
        app.contact(uuid.UUID(campaign), "completed")

    processes.wait_for(
        lambda: set(campaigns) <= local_services.campaign_partition_keys(stack.graphql),
        120,
        "the campaign partitions sensor",
        interval=2,
    )
    local_services.launch_backfill(stack.graphql, campaigns)

    def completed_backfill_jobs() -> int:
        with app.engine.connect() as conn:
            return conn.execute(
                text(
                    "SELECT count(*) FROM export_jobs WHERE status = 'completed' "
                    "AND requested_by_user_id IS NULL AND campaign_id::text = ANY(:ids)"
                ),
                {"ids": campaigns},
            ).scalar_one()

    processes.wait_for(lambda: completed_backfill_jobs() >= 50, 600, "50 backfill jobs", interval=3)
    assert completed_backfill_jobs() == 50


def test_http_request_through_the_daemon_to_a_downloaded_file(stack, app):
    """A campaign manager's client over real HTTP: request, poll, download."""
    manager = app.user("campaign_manager")
    campaign = app.campaign("HTTP campaign")
    for state in ("completed", "refused", "pending"):
        contact = app.contact(campaign, state, external_contact_id=f"http-{state}")
        app.response(contact, campaign, 'Sì, "grazie"\nciao')
    headers = {"Authorization": f"Bearer {token(oidc_subject(app, manager))}"}

    created = requests.post(f"{stack.api}/api/campaigns/{campaign}/export", headers=headers)
    assert created.status_code == 202, created.text
    job_url = f"{stack.api}/api/exports/{created.json()['job_id']}"

    def finished():
        job = requests.get(job_url, headers=headers, timeout=10).json()
        return job if job["status"] in ("completed", "failed") else None

    job = processes.wait_for(finished, 180, "the export over HTTP")
    assert job["status"] == "completed", job["error_message"]
    body = requests.get(job["download_url"], timeout=30).content.decode("utf-8")
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert rows[1:] == database_rows(app, campaign) and job["total_records"] == 2
    unauthenticated = requests.get(job_url, timeout=10)
    assert unauthenticated.status_code == 401
