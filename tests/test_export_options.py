"""The format, outcome, window and time-zone options (issue 25): stored on the job as
asked, shown with every default, refused in one line naming the value and the rule
(422 over HTTP, an `error:` line from the CLI), nothing recorded on refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from voicesurvey_exports.app_db import export_jobs as jobs
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.service.requests import InvalidRequest, check_options

from .conftest import DEFAULT_OPTIONS, AppData, request_api
from .test_cli import cli
from .test_http_api import service, user_with_token

ROME_WEEK = {
    "format": "jsonl",
    "outcomes": ["refused"],
    "attempted_from": "2026-11-09T00:00:00+01:00",
    "attempted_to": "2026-11-16T00:00:00+01:00",
    "time_zone": "Europe/Rome",
}
# As the job shows it: the instants in UTC.
ROME_WEEK_SHOWN = {
    **DEFAULT_OPTIONS,
    **ROME_WEEK,
    "attempted_from": "2026-11-08T23:00:00Z",
    "attempted_to": "2026-11-15T23:00:00Z",
}

# (options, the one line that refuses them)
REFUSED = [
    ({"format": "pdf"}, "option format 'pdf' must be one of: csv, jsonl, parquet, xlsx"),
    ({"format": "CSV"}, "option format 'CSV' must be one of: csv, jsonl, parquet, xlsx"),
    (
        {"format": "parquet", "compression": "gzip"},
        "option compression 'gzip' cannot be used with format 'parquet': it is compressed inside",
    ),
    (
        {"format": "xlsx", "compression": "gzip"},
        "option compression 'gzip' cannot be used with format 'xlsx': it is compressed inside",
    ),
    (
        {"format": "parquet", "bom": True},
        "option bom true cannot be used with format 'parquet': it is not a text file",
    ),
    (
        {"format": "xlsx", "bom": True},
        "option bom true cannot be used with format 'xlsx': it is not a text file",
    ),
    ({"outcomes": []}, "option outcomes [] must be a non-empty list of terminal states"),
    ({"outcomes": ["won"]}, "option outcomes: 'won' must be one of: completed, refused"),
    ({"outcomes": [""]}, "option outcomes: '' must be one of: completed, refused"),
    ({"outcomes": ["pending"]}, "option outcomes: 'pending' is not a terminal state"),
    ({"outcomes": ["refused", "in_progress"]}, "'in_progress' is not a terminal state"),
    (
        {"attempted_from": "2026-11-09T00:00:00"},
        "option attempted_from 2026-11-09T00:00:00 has no UTC offset",
    ),
    ({"attempted_to": "2026-11-09"}, "option attempted_to 2026-11-09 has no UTC offset"),
    (
        {"attempted_from": "last week"},
        "option attempted_from 'last week' is not an ISO 8601 date and time",
    ),
    (
        {"attempted_from": "2026-11-09T00:00:00Z", "attempted_to": "2026-11-09T01:00:00+01:00"},
        "option attempted_from 2026-11-09T00:00:00Z must be before attempted_to",
    ),
    (
        {"attempted_from": "2026-11-10T00:00:00Z", "attempted_to": "2026-11-09T00:00:00Z"},
        "must be before attempted_to 2026-11-09T00:00:00Z (the window is [from, to))",
    ),
    (
        {"attempted_from": "2026-11-09T00:00:00 01:00"},
        "is not an ISO 8601 date and time (e.g. 2026-11-16T00:00:00+01:00) (in a URL query, "
        "write its + as %2B)",
    ),
    ({"time_zone": "Mars/Olympus"}, "option time_zone 'Mars/Olympus' is not an IANA time zone"),
    ({"time_zone": "europe/rome"}, "option time_zone 'europe/rome' is not an IANA time zone"),
    ({"time_zone": ""}, "option time_zone '' is not an IANA time zone"),
    ({"time_zone": "../../etc/passwd"}, "is not an IANA time zone"),
]


@pytest.mark.parametrize(("options", "message"), REFUSED)
def test_check_options_refuses_each_bad_value_in_one_line(options, message):
    with pytest.raises(InvalidRequest) as refused:
        check_options(**options)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_window_and_outcomes_are_kept_in_the_contracts_order_and_in_utc():
    checked = check_options(
        outcomes=["excluded", "refused", "refused"],
        attempted_from="2026-11-09T00:00:00+01:00",
        attempted_to="2026-11-16T00:00:00Z",
    )
    assert checked.outcomes == ("refused", "excluded")
    assert checked.attempted_from == datetime(2026, 11, 8, 23, tzinfo=UTC)
    assert checked.attempted_to == datetime(2026, 11, 16, tzinfo=UTC)


def test_the_service_stores_the_options_and_shows_them_with_every_default(postgres_url, s3_client):
    engine = get_engine(postgres_url)
    data, api = AppData(engine), request_api(engine, s3_client)
    campaign, user = data.campaign(), data.user()

    job = api.request_export(campaign, user, **ROME_WEEK)
    plain = api.request_export(campaign, user)

    assert job.to_json()["options"] == ROME_WEEK_SHOWN
    assert api.get_export(job.id, user).to_json()["options"] == ROME_WEEK_SHOWN
    assert plain.to_json()["options"] == DEFAULT_OPTIONS
    row = data.job_row(job.id)
    assert (row["format"], row["outcomes"], row["time_zone"]) == ("jsonl", "refused", "Europe/Rome")
    assert data.job_row(plain.id)["outcomes"] is None  # every terminal state


@pytest.mark.parametrize(("options", "message"), REFUSED[:6] + REFUSED[-4:])
def test_the_service_refuses_and_records_nothing(postgres_url, s3_client, options, message):
    engine = get_engine(postgres_url)
    data, api = AppData(engine), request_api(engine, s3_client)
    with pytest.raises(InvalidRequest, match="option"):
        api.request_export(data.campaign(), data.user(), **options)
    assert data.count(export_jobs) == 0


def test_post_and_get_take_the_options(postgres_url, s3_client):
    engine = get_engine(postgres_url)
    data, client = AppData(engine), service(engine, s3_client)
    campaign = data.campaign()
    _, headers = user_with_token(data, "campaign_manager")
    path = f"/api/campaigns/{campaign}/export"

    posted = client.post(path, headers=headers, json=ROME_WEEK)
    got = client.get(path, headers=headers, params={**ROME_WEEK, "outcomes": "refused,not_reached"})
    parquet = client.post(path, headers=headers, json={"format": "parquet"})

    assert [r.status_code for r in (posted, got, parquet)] == [202, 202, 202], got.text
    assert posted.json()["options"] == ROME_WEEK_SHOWN
    assert got.json()["options"] == {**ROME_WEEK_SHOWN, "outcomes": ["refused", "not_reached"]}
    shown = client.get(f"/api/exports/{posted.json()['job_id']}", headers=headers).json()
    assert shown["options"] == ROME_WEEK_SHOWN
    assert parquet.json()["options"] == {**DEFAULT_OPTIONS, "format": "parquet"}


@pytest.mark.parametrize(("options", "message"), REFUSED)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_http_refuses_each_bad_value_with_422_and_records_nothing(
    postgres_url, s3_client, options, message, method
):
    engine = get_engine(postgres_url)
    data, client = AppData(engine), service(engine, s3_client)
    _, headers = user_with_token(data, "campaign_manager")
    path = f"/api/campaigns/{data.campaign()}/export"
    if method == "POST":
        response = client.post(path, headers=headers, json=options)
    else:
        query = {
            name: ",".join(value)
            if name == "outcomes"
            else str(value).lower()
            if isinstance(value, bool)
            else value
            for name, value in options.items()
        }
        if query.get("outcomes") == "":  # [] and [""] are both an empty parameter
            message = "option outcomes [] must be a non-empty list"
        response = client.get(path, headers=headers, params=query)
    assert response.status_code == 422, response.text
    assert data.count(export_jobs) == 0
    errors = response.json()["errors"]
    # The service's one line for most; pydantic's enum error, naming the field, for a
    # value outside format's or outcomes' list in a JSON body.
    named = any(message in error["msg"] for error in errors) or any(
        next(iter(options)) in error["loc"] and error["type"] == "literal_error" for error in errors
    )
    assert named, errors


def test_the_cli_takes_the_options_and_refuses_a_bad_one_in_one_line(
    create_postgres_database, aws_credentials
):
    from voicesurvey_exports.app_db.migrations import upgrade

    env = {"DATABASE_URL": create_postgres_database("cli_options"), "AWS_ENDPOINT_URL": ""}
    engine = get_engine(env["DATABASE_URL"])
    upgrade(engine)
    data = AppData(engine)
    campaign, manager = str(data.campaign()), str(data.user("campaign_manager"))
    request = ("request", "--campaign-id", campaign, "--user-id", manager)

    made = cli(
        *request,
        "--format",
        "jsonl",
        "--outcome",
        "refused",
        "--attempted-from",
        ROME_WEEK["attempted_from"],
        "--attempted-to",
        ROME_WEEK["attempted_to"],
        "--time-zone",
        "Europe/Rome",
        env=env,
    )
    refused = cli(*request, "--format", "parquet", "--gzip", env=env)
    naive = cli(*request, "--attempted-from", "2026-11-09T00:00", env=env)

    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["options"] == ROME_WEEK_SHOWN
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "error: option compression 'gzip' cannot be used with format 'parquet': it is "
        "compressed inside\n"
    )
    assert naive.returncode == 2
    assert naive.stderr.startswith("error: option attempted_from 2026-11-09T00:00 has no UTC")
    assert naive.stderr.count("\n") == 1
    assert data.count(export_jobs) == 1


@pytest.mark.parametrize(
    "values",
    [
        {"format": "pdf"},
        {"format": "parquet", "compression": "gzip"},
        {"format": "xlsx", "bom": True},
        {"outcomes": ""},
        {"time_zone": ""},
        {
            "attempted_from": datetime(2026, 11, 9, tzinfo=UTC),
            "attempted_to": datetime(2026, 11, 9, tzinfo=UTC),
        },
    ],
)
def test_the_database_refuses_rows_the_rules_forbid(postgres_url, values):
    data = AppData(get_engine(postgres_url))
    campaign = data.campaign()
    with pytest.raises(IntegrityError, match="ck_export_jobs_"):
        data.export_job(campaign, **values)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("outcomes", "refused,pending", "'pending' is not one of the terminal states"),
        ("time_zone", "Mars/Olympus", "not an IANA time zone name"),
    ],
)
def test_a_row_the_rules_miss_fails_its_job_naming_the_value(postgres_url, column, value, reason):
    data = AppData(get_engine(postgres_url))
    job_id = data.export_job(data.campaign(), **{column: value})
    with data.engine.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert reason in jobs.unknown_option(job)
