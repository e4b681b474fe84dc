"""The voicesurvey-exports command, run as a user runs it (a real process)."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from voicesurvey_exports.app_db.engine import get_engine

from .conftest import AppData


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voicesurvey_exports.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cli_env(create_postgres_database, aws_credentials):
    return {"DATABASE_URL": create_postgres_database("cli"), "AWS_ENDPOINT_URL": ""}


def test_db_upgrade_then_request_status_and_list(cli_env):
    first = cli("db", "upgrade", env=cli_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["applied"] == [1, 2]
    assert json.loads(cli("db", "upgrade", env=cli_env).stdout)["applied"] == []

    data = AppData(get_engine(cli_env["DATABASE_URL"]))
    campaign, manager = data.campaign(), data.user("campaign_manager")
    requested = cli(
        "request", "--campaign-id", str(campaign), "--user-id", str(manager), env=cli_env
    )
    assert requested.returncode == 0, requested.stderr
    job = json.loads(requested.stdout)
    assert {
        "job_id",
        "campaign_id",
        "status",
        "total_records",
        "download_url",
        "url_expires_at",
        "error_message",
        "created_at",
        "completed_at",
    } <= set(job)
    assert (job["status"], job["campaign_id"]) == ("pending", str(campaign))
    assert job["created_at"].endswith("Z")

    status = json.loads(cli("status", job["job_id"], "--user-id", str(manager), env=cli_env).stdout)
    assert status == job
    listed = cli("list", "--campaign-id", str(campaign), "--user-id", str(manager), env=cli_env)
    assert [j["job_id"] for j in json.loads(listed.stdout)] == [job["job_id"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["request", "--campaign-id", "nope", "--user-id", str(uuid.UUID(int=1))],
            "error: campaign id 'nope' is not a valid UUID",
        ),
        (
            ["status", str(uuid.UUID(int=5)), "--user-id", str(uuid.UUID(int=1))],
            f"error: user {uuid.UUID(int=1)} is not a known user and may not use exports",
        ),
    ],
)
def test_errors_are_one_line_on_stderr_with_non_zero_exit(cli_env, args, message):
    assert cli("db", "upgrade", env=cli_env).returncode == 0
    result = cli(*args, env=cli_env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == message + "\n"


def test_bad_configuration_is_reported_before_anything_happens(cli_env):
    env = {**cli_env, "EXPORT_URL_EXPIRATION_SECONDS": "0"}
    result = cli(
        "list", "--campaign-id", str(uuid.uuid4()), "--user-id", str(uuid.uuid4()), env=env
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: EXPORT_URL_EXPIRATION_SECONDS='0' must be")
    assert result.stderr.count("\n") == 1


def test_unreachable_database_is_one_line(cli_env):
    env = {**cli_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = cli("db", "upgrade", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: database: ") and result.stderr.count("\n") == 1
