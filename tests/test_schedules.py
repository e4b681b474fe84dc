"""Recurring exports from the app's side: create, list and delete schedules through the CLI
and the HTTP API, with the exports' roles and access policy; every refusal records nothing."""

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import export_schedules
from voicesurvey_exports.service import cli as cli_module
from voicesurvey_exports.service.http.app import create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier

from .conftest import DEFAULT_OPTIONS, TEST_BUCKET, AppData, request_api
from .test_http_api import AUDIENCE, ISSUER, SECRET, user_with_token


@pytest.fixture
def app_data(postgres_url):
    return AppData(get_engine(postgres_url))


def client_for(app_data, s3_client, **variables) -> TestClient:
    api = request_api(app_data.engine, s3_client, **variables)
    verifier = TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET))
    return TestClient(create_app(api, verifier))


@pytest.fixture
def client(app_data, s3_client):
    return client_for(app_data, s3_client)


# --- CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run_cli(postgres_url, aws_credentials, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("S3_BUCKET_NAME", TEST_BUCKET)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = cli_module.main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_creates_lists_and_deletes_a_schedule(run_cli, app_data):
    manager, campaign = app_data.user(), app_data.campaign()
    code, out, err = run_cli(
        "schedule", "list", "--campaign-id", str(campaign), "--user-id", str(manager)
    )
    assert (code, json.loads(out)) == (0, [])
    code, out, err = run_cli(
        "schedule",
        "create",
        "--campaign-id",
        str(campaign),
        "--user-id",
        str(manager),
        "--cron",
        "0 6 * * *",
        "--time-zone",
        "Europe/Rome",
        "--incremental",
        "--bom",
        "--compression",
        "gzip",
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["cron"] == "0 6 * * *" and created["time_zone"] == "Europe/Rome"
    assert created["incremental"] is True and created["enabled"] is True
    assert created["options"] == {
        **DEFAULT_OPTIONS,
        "bom": True,
        "compression": "gzip",
        "time_zone": "Europe/Rome",  # the files' zone is the schedule's unless given
    }
    assert created["campaign_id"] == str(campaign)
    assert created["created_by_user_id"] == str(manager)
    code, out, _ = run_cli(
        "schedule", "list", "--campaign-id", str(campaign), "--user-id", str(manager)
    )
    assert [s["schedule_id"] for s in json.loads(out)] == [created["schedule_id"]]
    deleting = ("schedule", "delete", created["schedule_id"], "--user-id", str(manager))
    code, out, err = run_cli(*deleting)
    assert code == 0, err
    code, out, _ = run_cli(
        "schedule", "list", "--campaign-id", str(campaign), "--user-id", str(manager)
    )
    assert json.loads(out) == []
    code, _, err = run_cli(*deleting)
    assert (code, err) == (4, f"error: export schedule {created['schedule_id']} does not exist\n")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--cron", "0 6 * *"],
            "argument --cron: cron '0 6 * *' must have five fields: minute hour "
            "day-of-month month day-of-week",
        ),
        (
            ["--cron", "0 25 * * *"],
            "argument --cron: cron '0 25 * * *' is not a valid cron expression",
        ),
        (
            ["--cron", "0 6 * * *", "--time-zone", "Europe/Atlantis"],
            "argument --time-zone: time zone 'Europe/Atlantis' is not an IANA time zone "
            "name (e.g. Europe/Rome, UTC)",
        ),
    ],
)
def test_cli_refuses_a_bad_cron_or_zone_as_a_usage_error(run_cli, app_data, option, message):
    manager, campaign = app_data.user(), app_data.campaign()
    code, out, err = run_cli(
        "schedule", "create", "--campaign-id", str(campaign), "--user-id", str(manager), *option
    )
    assert code == 2 and out == ""
    assert err.splitlines()[-1].endswith(message)
    assert app_data.count(export_schedules) == 0


def test_cli_refuses_a_viewer(run_cli, app_data):
    viewer, campaign = app_data.user("viewer"), app_data.campaign()
    for args in (
        ["create", "--campaign-id", str(campaign), "--user-id", str(viewer), "--cron", "* * * * *"],
        ["list", "--campaign-id", str(campaign), "--user-id", str(viewer)],
    ):
        code, out, err = run_cli("schedule", *args)
        assert (code, out) == (3, "")
        assert err == (
            f"error: user {viewer} has role viewer; exports need role campaign_manager or admin\n"
        )
    assert app_data.count(export_schedules) == 0


# --- HTTP --------------------------------------------------------------------------------


def test_http_creates_reads_lists_and_deletes_a_schedule(client, app_data):
    user_id, headers = user_with_token(app_data, "campaign_manager")
    campaign = app_data.campaign()
    collection = f"/api/campaigns/{campaign}/export-schedules"
    assert client.get(collection, headers=headers).json() == []
    created = client.post(
        collection,
        headers=headers,
        json={"cron": "30 7 * * 1", "time_zone": "America/New_York", "incremental": True},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/api/export-schedules/{body['schedule_id']}"
    assert body["options"] == {**DEFAULT_OPTIONS, "time_zone": body["time_zone"]}
    assert (body["cron"], body["time_zone"], body["incremental"]) == (
        "30 7 * * 1",
        "America/New_York",
        True,
    )
    assert body["created_by_user_id"] == str(user_id) and body["last_due_at"] is None
    assert client.get(created.headers["location"], headers=headers).json() == body
    assert client.get(collection, headers=headers).json() == [body]
    deleted = client.delete(created.headers["location"], headers=headers)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert client.get(collection, headers=headers).json() == []
    assert client.get(created.headers["location"], headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"cron": "every day"}, "cron 'every day' must have five fields"),
        ({"cron": "0 6 * * * *"}, "cron '0 6 * * * *' must have five fields"),
        ({"cron": "61 * * * *"}, "cron '61 * * * *' is not a valid cron expression"),
        ({"cron": "0 6 * * *", "time_zone": "CEST"}, "time zone 'CEST' is not an IANA"),
    ],
)
def test_http_refuses_a_bad_cron_or_zone_with_422(client, app_data, body, detail):
    _, headers = user_with_token(app_data, "campaign_manager")
    campaign = app_data.campaign()
    response = client.post(
        f"/api/campaigns/{campaign}/export-schedules", headers=headers, json=body
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)
    assert app_data.count(export_schedules) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"cron": "0 6 * * *", "options": {"compression": "zip"}},
        {"cron": "0 6 * * *", "options": {"bom": 1}},
        {"cron": "0 6 * * *", "incremental": "yes"},
        {"cron": "0 6 * * *", "every": "day"},
        {},
    ],
)
def test_http_refuses_a_bad_body_with_422(client, app_data, body):
    _, headers = user_with_token(app_data, "campaign_manager")
    campaign = app_data.campaign()
    response = client.post(
        f"/api/campaigns/{campaign}/export-schedules", headers=headers, json=body
    )
    assert response.status_code == 422
    assert app_data.count(export_schedules) == 0


def test_http_refuses_a_viewer_with_403(client, app_data):
    manager = app_data.user()
    campaign = app_data.campaign()
    schedule = app_data.schedule(campaign, manager)
    _, headers = user_with_token(app_data, "viewer")
    collection = f"/api/campaigns/{campaign}/export-schedules"
    assert client.post(collection, headers=headers, json={"cron": "0 6 * * *"}).status_code == 403
    assert client.get(collection, headers=headers).status_code == 403
    assert client.delete(f"/api/export-schedules/{schedule}", headers=headers).status_code == 403
    assert app_data.count(export_schedules) == 1  # the manager's, not deleted
    assert client.get(collection, headers={}).status_code == 401


def test_owner_policy_hides_other_campaigns_schedules_as_404(app_data, s3_client):
    client = client_for(app_data, s3_client, EXPORT_ACCESS_POLICY="owner")
    owner, owner_headers = user_with_token(app_data, "campaign_manager")
    _, other_headers = user_with_token(app_data, "campaign_manager")
    campaign = app_data.campaign(created_by_user_id=owner)
    collection = f"/api/campaigns/{campaign}/export-schedules"
    created = client.post(collection, headers=owner_headers, json={"cron": "0 6 * * *"})
    assert created.status_code == 201
    location = created.headers["location"]
    missing = client.delete(f"/api/export-schedules/{uuid.uuid4()}", headers=other_headers)
    hidden = client.delete(location, headers=other_headers)
    assert hidden.status_code == missing.status_code == 404
    # The same words as for a schedule that does not exist: ids cannot be probed.
    schedule_id = location.rsplit("/", 1)[1]
    assert hidden.json()["detail"] == (
        f"export schedule {schedule_id} does not exist or is not of one of your campaigns"
    )
    for response in (
        client.get(collection, headers=other_headers),
        client.post(collection, headers=other_headers, json={"cron": "0 6 * * *"}),
    ):
        assert response.status_code == 404
    assert client.get(collection, headers=owner_headers).status_code == 200
    assert app_data.count(export_schedules) == 1


def test_http_schedule_options_take_the_new_formats_and_their_own_time_zone(client, app_data):
    _, headers = user_with_token(app_data, "campaign_manager")
    campaign = app_data.campaign()
    created = client.post(
        f"/api/campaigns/{campaign}/export-schedules",
        headers=headers,
        json={
            "cron": "0 6 * * *",
            "time_zone": "Europe/Rome",
            "options": {"format": "parquet", "outcomes": ["refused"], "time_zone": "UTC"},
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["time_zone"] == "Europe/Rome"
    assert created.json()["options"] == {
        **DEFAULT_OPTIONS,
        "format": "parquet",
        "outcomes": ["refused"],
        "time_zone": "UTC",
    }
    refused = client.post(
        f"/api/campaigns/{campaign}/export-schedules",
        headers=headers,
        json={"cron": "0 6 * * *", "options": {"format": "xlsx", "compression": "gzip"}},
    )
    assert refused.status_code == 422 and "xlsx" in refused.json()["detail"]
    assert app_data.count(export_schedules) == 1
