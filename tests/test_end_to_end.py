"""The whole flow with real processes: the daemon and dagster-webserver on each instance
file (deploy/dagster.yaml with plain `dagster-daemon run`, and the opt-in fast path,
deploy/dagster-single-node.yaml with `voicesurvey-exports-daemon`; PostgreSQL instance
storage), the app database on PostgreSQL, and a moto S3 server on loopback. URLs are
plain postgresql://, as operators write them. What the launcher and the daemon's loops
change (a request, a backfill, a cancel) runs on both; the rest on the default only."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import time
import uuid

import pytest
import requests
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import campaigns as campaigns_table
from voicesurvey_exports.export_file.csv_format import CSV_COLUMNS

from .conftest import DEFAULT_OPTIONS, AppData
from .test_faults import RUN_STATUS, add_contacts
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BUCKET = "e2e-exports"
ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'


@pytest.fixture(scope="module", params=list(local_services.INSTANCES))
def stack(request, stack_databases, tmp_path_factory):
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
    instance = local_services.INSTANCES[request.param]
    with local_services.local_stack(
        home, settings, bucket=BUCKET, http_api=True, instance=instance
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def app(stack) -> AppData:
    return AppData(get_engine(stack.env["DATABASE_URL"]))


def default_instance_only(stack) -> None:
    """For what neither the launcher nor the daemon's loops touch: once is enough."""
    if stack.instance is not local_services.DEFAULT:
        pytest.skip("launcher-independent: runs on the default instance")


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

    progress = []

    def finished():
        progress.append(app.job_row(job_id)["progress_percent"])
        return job_status(app, job_id)

    processes.wait_for(finished, 180, "the export job to finish", interval=0.1)

    job = app.job_row(job_id)
    assert job["status"] == "completed", job["error_message"]
    assert progress[0] is None and job["progress_percent"] == 100  # pending, then done
    seen = [percent for percent in progress if percent is not None]
    assert seen == sorted(seen)
    response = requests.get(job["download_url"], timeout=30)
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    assert ".csv" in response.headers["Content-Disposition"]
    parsed = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert parsed[0] == list(CSV_COLUMNS)
    expected = database_rows(app, campaign)
    assert len(expected) == job["total_records"] > 0
    assert parsed[1:] == expected


PARTITION_STATUSES = """
query { assetNodeOrError(assetKey: {path: ["campaign_export"]}) { ... on AssetNode {
  assetPartitionStatuses { ... on DefaultPartitionStatuses {
    materializedPartitions failedPartitions } } } } }
"""


def test_backfill_of_fifty_campaigns_isolates_the_one_that_fails(stack, app):
    """Through the UI's GraphQL API: 50 campaigns in runs of several campaigns each; one
    campaign's completion is refused by the database, so that one alone ends failed."""
    campaigns = [str(app.campaign(f"Backfill {i}")) for i in range(50)]
    for campaign in campaigns:
        app.contact(uuid.UUID(campaign), "completed")
    bad = campaigns[7]
    with app.engine.begin() as conn:
        conn.execute(
            text("""
            CREATE FUNCTION e2e_refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected: completion of campaign % refused', NEW.campaign_id;
            END $$
        """)
        )
        conn.execute(
            text(f"""
            CREATE TRIGGER e2e_refuse_completion BEFORE UPDATE ON export_jobs FOR EACH ROW
            WHEN (NEW.status = 'completed' AND NEW.campaign_id = '{bad}')
            EXECUTE FUNCTION e2e_refuse_completion()
        """)
        )

    processes.wait_for(
        lambda: set(campaigns) <= local_services.campaign_partition_keys(stack.graphql),
        120,
        "the campaign partitions sensor",
        interval=2,
    )
    local_services.launch_backfill(stack.graphql, campaigns)

    def backfill_jobs() -> dict[str, dict]:
        with app.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT campaign_id::text AS campaign, status, error_message, download_url, "
                    "s3_key FROM export_jobs WHERE requested_by_user_id IS NULL "
                    "AND campaign_id::text = ANY(:ids)"
                ),
                {"ids": campaigns},
            )
            return {row.campaign: row._asdict() for row in rows}

    def all_finished() -> bool:
        jobs = backfill_jobs()
        return len(jobs) == 50 and all(
            j["status"] in ("completed", "failed") for j in jobs.values()
        )

    try:
        processes.wait_for(all_finished, 600, "50 backfill jobs", interval=3)
    finally:
        with app.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER e2e_refuse_completion ON export_jobs"))
            conn.execute(text("DROP FUNCTION e2e_refuse_completion()"))
    jobs = backfill_jobs()
    assert sorted(c for c, j in jobs.items() if j["status"] == "completed") == sorted(
        set(campaigns) - {bad}
    )
    failed = jobs[bad]
    assert failed["status"] == "failed" and failed["download_url"] is None
    assert "injected: completion of campaign" in failed["error_message"]
    assert "\n" not in failed["error_message"] and "Signature" not in failed["error_message"]
    # The failed campaign's file is gone; the UI shows its partition failed, not materialised.
    assert failed["s3_key"] is None
    keys = {
        item["Key"]
        for page in stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for item in page.get("Contents", [])
    }
    assert not any(key.startswith(f"exports/{bad}/") for key in keys)

    def statuses() -> dict:
        node = local_services.graphql(stack.graphql, PARTITION_STATUSES)["data"]
        return node["assetNodeOrError"]["assetPartitionStatuses"]

    processes.wait_for(lambda: bad in statuses()["failedPartitions"], 60, "the failed partition")
    assert bad not in statuses()["materializedPartitions"]
    assert set(campaigns) - {bad} <= set(statuses()["materializedPartitions"])


def test_http_request_through_the_daemon_to_a_downloaded_file(stack, app):
    """A campaign manager's client over real HTTP: request, poll, download."""
    default_instance_only(stack)
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


def test_http_request_with_bom_and_gzip_downloads_a_csv_gz_that_excel_reads(stack, app):
    """The options over real HTTP, to a real presigned download of the stored object."""
    default_instance_only(stack)
    manager = app.user("campaign_manager")
    campaign = app.campaign("Qualität – Frühjahr")
    for state in ("completed", "refused"):
        contact = app.contact(campaign, state, external_contact_id=f"gz-{state}")
        app.response(contact, campaign, "Größe 👍", "=1+1")
    headers = {"Authorization": f"Bearer {token(oidc_subject(app, manager))}"}

    created = requests.post(
        f"{stack.api}/api/campaigns/{campaign}/export",
        headers=headers,
        json={"bom": True, "compression": "gzip"},
        timeout=10,
    )
    assert created.status_code == 202, created.text
    assert created.json()["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "gzip"}
    job_url = f"{stack.api}/api/exports/{created.json()['job_id']}"

    def finished():
        job = requests.get(job_url, headers=headers, timeout=10).json()
        return job if job["status"] in ("completed", "failed") else None

    job = processes.wait_for(finished, 180, "the gzip export over HTTP")
    assert job["status"] == "completed", job["error_message"]
    download = requests.get(job["download_url"], timeout=30)
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in download.headers  # a .csv.gz file, not a transfer encoding
    disposition = download.headers["Content-Disposition"]
    assert disposition.split('filename="')[1].split('"')[0].endswith(".csv.gz")
    assert disposition.endswith(".csv.gz")
    body = download.content
    assert (len(body), hashlib.sha256(body).hexdigest()) == (job["size_bytes"], job["sha256"])
    csv_bytes = gzip.decompress(body)
    assert csv_bytes.startswith(b"\xef\xbb\xbf" + ",".join(CSV_COLUMNS).encode())
    rows = list(csv.reader(io.StringIO(csv_bytes.decode("utf-8-sig"), newline="")))
    assert rows[1:] == database_rows(app, campaign) and job["total_records"] == 2


def run_status(stack, run_id: str) -> str | None:
    """The run's status once it has ended, else None."""
    run = local_services.graphql(stack.graphql, RUN_STATUS, {"runId": run_id})["data"]
    status = run["runOrError"].get("status")
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def test_large_export_shows_progress_and_cancelled_over_http_leaves_nothing(stack, app):
    """1,500,000 contacts: the job's progress rises while it runs; a cancel over HTTP
    stops the run, and within 30 s the job is cancelled with no link and nothing in S3
    (no object, no multipart upload), announced once; the run ends CANCELED, not FAILURE
    (operators alert on failed runs)."""
    # A cancel through both launchers is in test_faults (a lighter run).
    default_instance_only(stack)
    manager = app.user("campaign_manager")
    campaign = app.campaign("Large campaign")
    add_contacts(app, campaign, 1_500_000)
    headers = {"Authorization": f"Bearer {token(oidc_subject(app, manager))}"}
    created = requests.post(f"{stack.api}/api/campaigns/{campaign}/export", headers=headers)
    assert created.status_code == 202, created.text
    job_url = f"{stack.api}/api/exports/{created.json()['job_id']}"
    seen: list[int] = []

    def midway():
        job = requests.get(job_url, headers=headers, timeout=10).json()
        if job["progress_percent"] is not None:
            seen.append(job["progress_percent"])
        assert job["status"] in ("pending", "running"), job
        return job if job["status"] == "running" and (job["progress_percent"] or 0) > 0 else None

    processes.wait_for(midway, 300, "the export to show progress", interval=0.5)
    asked = requests.post(f"{job_url}/cancel", headers=headers, timeout=10)
    assert asked.status_code == 202, asked.text
    assert asked.json()["status"] == "running" and asked.json()["cancel_requested_at"]
    cancelled_at = time.monotonic()

    def ended():
        job = requests.get(job_url, headers=headers, timeout=10).json()
        if job["progress_percent"] is not None:
            seen.append(job["progress_percent"])
        return job if job["status"] not in ("pending", "running") else None

    job = processes.wait_for(ended, 30, "the job to end cancelled", interval=0.5)
    assert time.monotonic() - cancelled_at <= 30
    assert (job["status"], job["error_message"]) == ("cancelled", "cancelled at the user's request")
    assert job["download_url"] is None and job["sha256"] is None
    assert any(0 < percent < 100 for percent in seen), seen
    assert seen == sorted(seen), "progress went backwards"
    s3 = stack.s3_client()
    assert (
        s3.list_objects_v2(Bucket=BUCKET, Prefix=f"exports/{campaign}/").get("Contents", []) == []
    )
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    with app.engine.connect() as conn:
        events = conn.execute(
            text("SELECT event FROM export_notifications WHERE export_job_id = :id"),
            {"id": job["job_id"]},
        ).scalars()
        assert list(events) == ["export.cancelled"]

    run_id = app.job_row(uuid.UUID(job["job_id"]))["dagster_run_id"]
    assert processes.wait_for(lambda: run_status(stack, run_id), 60, "the run to end") == (
        "CANCELED"
    )


BACKFILL_RUNS = """
query($backfillId: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $backfillId}]}) {
    ... on Runs { results { runId status } } } }"""


def test_a_campaign_its_user_cancels_mid_backfill_run_does_not_fail_the_run(stack, app):
    """A backfill run of three campaigns, the middle one of 1,500,000 contacts: its user
    cancels that one over HTTP while it exports; the other two complete and are
    materialised, the cancelled one leaves nothing, and the run ends SUCCESS."""
    default_instance_only(stack)
    manager = app.user("campaign_manager")
    headers = {"Authorization": f"Bearer {token(oidc_subject(app, manager))}"}
    # Ids next to each other, written at once: the partitions sensor adds them together, in
    # this order, so that the backfill puts all three in one run.
    prefix = uuid.uuid4().hex[:24]
    small_1, large, small_2 = (uuid.UUID(f"{prefix}{i:08x}") for i in (1, 2, 3))
    with app.engine.begin() as conn:
        conn.execute(
            campaigns_table.insert(),
            [
                {"id": campaign, "name": f"Backfill cancel {i}", "status": "completed"}
                for i, campaign in enumerate((small_1, large, small_2))
            ],
        )
    for campaign in (small_1, small_2):
        app.contact(campaign, "completed")
    add_contacts(app, large, 1_500_000)
    keys = [str(small_1), str(large), str(small_2)]
    processes.wait_for(
        lambda: set(keys) <= local_services.campaign_partition_keys(stack.graphql),
        120,
        "the campaign partitions sensor",
        interval=2,
    )
    backfill_id = local_services.launch_backfill(stack.graphql, keys)

    def exporting_large():
        with app.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT id, status, progress_percent FROM export_jobs "
                    "WHERE campaign_id = :campaign"
                ),
                {"campaign": large},
            ).one_or_none()
        if row is not None:
            assert row.status == "running", row
        return row.id if row is not None and (row.progress_percent or 0) > 0 else None

    large_job = processes.wait_for(exporting_large, 300, "the large campaign to export")
    asked = requests.post(f"{stack.api}/api/exports/{large_job}/cancel", headers=headers)
    assert asked.status_code == 202, asked.text

    def runs_ended():
        data = local_services.graphql(stack.graphql, BACKFILL_RUNS, {"backfillId": backfill_id})
        runs = data["data"]["runsOrError"]["results"]
        ended = runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
        return runs if ended else None

    runs = processes.wait_for(runs_ended, 300, "the backfill run to end", interval=1)
    assert [run["status"] for run in runs] == ["SUCCESS"], runs  # one run of three campaigns
    with app.engine.connect() as conn:
        jobs = {
            row.campaign_id: row
            for row in conn.execute(
                text(
                    "SELECT campaign_id, status, error_message, s3_key FROM export_jobs "
                    "WHERE campaign_id = ANY(:ids)"
                ),
                {"ids": [small_1, large, small_2]},
            )
        }
    assert [(jobs[c].status, jobs[c].error_message) for c in (small_1, large, small_2)] == [
        ("completed", None),
        ("cancelled", "cancelled at the user's request"),
        ("completed", None),
    ]
    s3 = stack.s3_client()
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"exports/{large}/").get("Contents", []) == []
    node = local_services.graphql(stack.graphql, PARTITION_STATUSES)["data"]
    materialized = set(node["assetNodeOrError"]["assetPartitionStatuses"]["materializedPartitions"])
    assert {str(small_1), str(small_2)} <= materialized and str(large) not in materialized


def test_http_requests_in_each_format_with_filters_and_a_zone_through_the_daemon(stack, app):
    """The four formats over real HTTP and the real daemon, in one session: each asks for
    the refusals of one week in Rome time; each download holds that one contact."""
    import json

    import openpyxl
    import pyarrow.parquet as pq

    default_instance_only(stack)
    manager = app.user("campaign_manager")
    campaign = app.campaign("Rifiuti – settimana")
    week = "2026-11-10T09:30:00+00:00"
    wanted = app.contact(campaign, "refused", last_attempt_at=week, external_contact_id="=x")
    app.contact(campaign, "refused", last_attempt_at="2026-11-20T09:30:00+00:00")
    app.contact(campaign, "completed", last_attempt_at=week)
    app.contact(campaign, "refused", last_attempt_at=None)
    headers = {"Authorization": f"Bearer {token(oidc_subject(app, manager))}"}
    options = {
        "outcomes": ["refused"],
        "attempted_from": "2026-11-09T00:00:00+01:00",
        "attempted_to": "2026-11-16T00:00:00+01:00",
        "time_zone": "Europe/Rome",
    }
    job_urls = {}
    for file_format in ("csv", "jsonl", "parquet", "xlsx"):
        created = requests.post(
            f"{stack.api}/api/campaigns/{campaign}/export",
            headers=headers,
            json={**options, "format": file_format},
            timeout=10,
        )
        assert created.status_code == 202, created.text
        job_urls[file_format] = f"{stack.api}/api/exports/{created.json()['job_id']}"

    def all_finished():
        jobs = {
            name: requests.get(url, headers=headers, timeout=10).json()
            for name, url in job_urls.items()
        }
        ended = all(job["status"] in ("completed", "failed") for job in jobs.values())
        return jobs if ended else None

    jobs = processes.wait_for(all_finished, 240, "the four format exports over HTTP")
    types = {
        "csv": "text/csv; charset=utf-8",
        "jsonl": "application/x-ndjson",
        "parquet": "application/vnd.apache.parquet",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    }
    for file_format, job in jobs.items():
        assert job["status"] == "completed", (file_format, job["error_message"])
        assert job["total_records"] == 1
        assert job["options"]["time_zone"] == "Europe/Rome"
        download = requests.get(job["download_url"], timeout=30)
        assert download.headers["Content-Type"] == types[file_format]
        assert download.headers["Content-Disposition"].endswith(f".{file_format}")
        body = download.content
        if file_format == "csv":
            [row] = csv.DictReader(io.StringIO(body.decode(), newline=""))
        elif file_format == "jsonl":
            [row] = [json.loads(line) for line in body.splitlines()]
        elif file_format == "parquet":
            [row] = pq.read_table(io.BytesIO(body)).to_pylist()
            assert row["last_attempt_at"].isoformat() == "2026-11-10T10:30:00+01:00"
            row["last_attempt_at"] = "2026-11-10T10:30:00+01:00"
        else:
            sheet = openpyxl.load_workbook(io.BytesIO(body)).worksheets[0]
            header, values = sheet.iter_rows(values_only=True)
            row = dict(zip(header, values, strict=True))
        assert row["contact_id"] == str(wanted), file_format
        assert row["last_attempt_at"] == "2026-11-10T10:30:00+01:00", file_format
        guarded = "'=x" if file_format == "csv" else "=x"
        assert row["external_contact_id"] == guarded, file_format
