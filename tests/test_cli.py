"""The voicesurvey-exports command, run as a user runs it (a real process)."""

import json
import os
import re
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.service import cli as cli_module
from voicesurvey_exports.settings import VARIABLES

from .conftest import DEFAULT_OPTIONS, TEST_BUCKET, AppData
from .test_migrations import old_runner_database
from .test_requests import database_refusing_links


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voicesurvey_exports.service.cli", *args],
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
    assert (
        first.stdout
        == "app schema at V0009: applied V0001, V0002, V0003, V0004, V0005, V0006, V0007, "
        "V0008, V0009\n"
    )
    assert cli("db", "upgrade", env=cli_env).stdout == "app schema at V0009: nothing to apply\n"

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


def test_db_status_and_adoption_of_an_old_database_are_one_line_each(cli_env):
    def db(command: str) -> str:
        result = cli("db", command, env=cli_env)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        return result.stdout

    to_apply = "to apply (run: voicesurvey-exports db upgrade)"
    assert (
        db("status")
        == "no app schema: V0001, V0002, V0003, V0004, V0005, V0006, V0007, V0008, V0009 "
        f"{to_apply}\n"
    )
    engine = get_engine(cli_env["DATABASE_URL"])
    old_runner_database(engine, (1, 2))
    assert (
        db("status")
        == f"app schema at V0002: V0003, V0004, V0005, V0006, V0007, V0008, V0009 {to_apply}\n"
    )
    assert db("upgrade") == (
        "app schema at V0009: adopted at V0002 from app_schema_migrations version 2; "
        "applied V0003, V0004, V0005, V0006, V0007, V0008, V0009\n"
    )
    assert db("status") == "app schema at V0009: up to date\n"

    with engine.begin() as conn:  # as a later release would leave it
        conn.exec_driver_sql("UPDATE voicesurvey_exports_alembic_version SET version_num = 'V0099'")
    assert db("status") == "app schema at V0099: newer than this release (its latest is V0009)\n"
    refused = cli("db", "upgrade", env=cli_env)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        "error: database: the app schema is at revision 'V0099', which this release does not "
        "know (its latest is V0009): use a release that ships V0099\n"
    )


def test_request_with_bom_and_gzip_shows_the_options_in_its_json(cli_env):
    assert cli("db", "upgrade", env=cli_env).returncode == 0
    data = AppData(get_engine(cli_env["DATABASE_URL"]))
    campaign, manager = str(data.campaign()), str(data.user("campaign_manager"))

    plain = cli("request", "--campaign-id", campaign, "--user-id", manager, env=cli_env)
    both = cli(
        "request", "--campaign-id", campaign, "--user-id", manager, "--bom", "--gzip", env=cli_env
    )
    gzip_only = cli(
        "request", "--campaign-id", campaign, "--user-id", manager, "--gzip", env=cli_env
    )

    assert json.loads(plain.stdout)["options"] == {
        **DEFAULT_OPTIONS,
        "bom": False,
        "compression": "none",
    }
    job = json.loads(both.stdout)
    assert job["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "gzip"}
    assert json.loads(gzip_only.stdout)["options"] == {
        **DEFAULT_OPTIONS,
        "bom": False,
        "compression": "gzip",
    }
    status = cli("status", job["job_id"], "--user-id", manager, env=cli_env)
    assert json.loads(status.stdout)["options"] == {
        **DEFAULT_OPTIONS,
        "bom": True,
        "compression": "gzip",
    }
    assert data.job_row(uuid.UUID(job["job_id"]))["compression"] == "gzip"


def test_a_bad_id_is_a_usage_error_naming_the_argument(cli_env):
    result = cli(
        "request", "--campaign-id", "nope", "--user-id", str(uuid.UUID(int=1)), env=cli_env
    )
    assert (result.returncode, result.stdout) == (cli_module.EXIT_USAGE, "")
    assert result.stderr.endswith(
        "error: argument --campaign-id: campaign id 'nope' is not a valid UUID\n"
    )


def test_an_unknown_user_is_not_permitted_in_one_line(cli_env):
    assert cli("db", "upgrade", env=cli_env).returncode == 0
    result = cli("status", str(uuid.UUID(int=5)), "--user-id", str(uuid.UUID(int=1)), env=cli_env)
    assert (result.returncode, result.stdout) == (cli_module.EXIT_NOT_PERMITTED, "")
    assert result.stderr == (
        f"error: user {uuid.UUID(int=1)} is not a known user and may not use exports\n"
    )


def test_bad_configuration_is_reported_before_anything_happens(cli_env):
    env = {**cli_env, "EXPORT_URL_EXPIRATION_SECONDS": "0"}
    result = cli(
        "list", "--campaign-id", str(uuid.uuid4()), "--user-id", str(uuid.uuid4()), env=env
    )
    assert result.returncode == cli_module.EXIT_CONFIG == 78
    assert result.stderr.startswith("error: EXPORT_URL_EXPIRATION_SECONDS='0' must be")
    assert result.stderr.count("\n") == 1


def test_unreachable_database_is_one_line(cli_env):
    env = {**cli_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = cli("db", "upgrade", env=env)
    assert result.returncode == cli_module.EXIT_UNAVAILABLE == 75  # retry later
    assert result.stderr.startswith("error: database: ") and result.stderr.count("\n") == 1


def completed_job_in(database_url: str, owner=None) -> tuple[AppData, uuid.UUID, uuid.UUID]:
    data = AppData(get_engine(database_url))
    campaign = data.campaign("Owned", created_by_user_id=owner)
    return data, campaign, data.completed_export(campaign)


def test_refresh_without_aws_credentials_is_one_line(cli_env):
    assert cli("db", "upgrade", env=cli_env).returncode == 0
    data, _, job = completed_job_in(cli_env["DATABASE_URL"])
    # No credentials anywhere: not in the environment, no files, no instance metadata.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        DATABASE_URL=cli_env["DATABASE_URL"],
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/credentials",
        AWS_CONFIG_FILE="/nonexistent/config",
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = subprocess.run(
        [sys.executable, "-m", "voicesurvey_exports.service.cli", "refresh-url", str(job)]
        + ["--user-id", str(data.user("admin"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (cli_module.EXIT_UNAVAILABLE, "")
    assert result.stderr == (
        "error: cannot check the export file in S3: NoCredentialsError: "
        "Unable to locate credentials\n"
    )
    assert data.job_row(job)["download_url"] == "old"


def test_owner_policy_denial_reads_like_an_unknown_job(cli_env):
    assert cli("db", "upgrade", env=cli_env).returncode == 0
    owner_data = AppData(get_engine(cli_env["DATABASE_URL"]))
    owner = owner_data.user("campaign_manager")
    _, campaign, job = completed_job_in(cli_env["DATABASE_URL"], owner=owner)
    stranger = str(owner_data.user("campaign_manager"))
    env = {**cli_env, "EXPORT_ACCESS_POLICY": "owner"}
    denied = cli("status", str(job), "--user-id", stranger, env=env)
    missing = uuid.uuid4()
    unknown = cli("status", str(missing), "--user-id", stranger, env=env)
    not_found = cli_module.EXIT_NOT_FOUND
    assert (denied.returncode, denied.stdout, unknown.returncode) == (not_found, "", not_found)
    assert denied.stderr == (
        f"error: export job {job} does not exist or is not of one of your campaigns\n"
    )
    assert denied.stderr == unknown.stderr.replace(str(missing), str(job))
    listed = cli("list", "--campaign-id", str(campaign), "--user-id", str(owner), env=env)
    assert [j["job_id"] for j in json.loads(listed.stdout)] == [str(job)]


def test_invalid_access_policy_is_one_line(cli_env):
    env = {**cli_env, "EXPORT_ACCESS_POLICY": "everyone"}
    result = cli(
        "list", "--campaign-id", str(uuid.uuid4()), "--user-id", str(uuid.uuid4()), env=env
    )
    assert result.returncode == cli_module.EXIT_CONFIG
    assert result.stderr == "error: EXPORT_ACCESS_POLICY='everyone' must be one of: role, owner\n"


@pytest.fixture
def in_process_env(monkeypatch, s3_client):
    """Run main() in this process, against moto's S3 (started by s3_client)."""

    def configure(database_url: str) -> None:
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("S3_BUCKET_NAME", TEST_BUCKET)
        monkeypatch.delenv("EXPORT_ACCESS_POLICY", raising=False)

    return configure


def test_refresh_of_a_file_gone_from_s3_is_one_line(in_process_env, postgres_url, capsys):
    in_process_env(postgres_url)
    data, _, job = completed_job_in(postgres_url)
    code = cli_module.main(["refresh-url", str(job), "--user-id", str(data.user("admin"))])
    out, err = capsys.readouterr()
    assert (code, out) == (cli_module.EXIT_WRONG_STATE, "")
    assert err == (
        f"error: export job {job}: the file no longer exists in S3; request a new export\n"
    )
    assert data.job_row(job)["s3_key"] is None


def test_a_failed_link_write_is_one_line_without_the_link(
    in_process_env, create_postgres_database, s3_client, capsys
):
    engine = database_refusing_links(create_postgres_database)
    database_url = engine.url.render_as_string(hide_password=False)
    in_process_env(database_url)
    data, _, job = completed_job_in(database_url)
    s3_client.put_object(Bucket=TEST_BUCKET, Key=data.job_row(job)["s3_key"], Body=b"x")
    code = cli_module.main(["refresh-url", str(job), "--user-id", str(data.user("admin"))])
    out, err = capsys.readouterr()
    assert (code, out) == (cli_module.EXIT_FAILED, "")  # refused: retrying would not help
    assert err.startswith("error: database: storing the new link") and err.count("\n") == 1
    assert "short_links" in err and "X-Amz" not in err


def test_version_prints_the_installed_package_version():
    result = cli("--version", env={})
    assert result.returncode == 0
    assert result.stdout == f"voicesurvey-exports {metadata.version('voicesurvey-exports')}\n"


def test_a_missing_argument_is_argparses_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_module.main(["status", str(uuid.uuid4())])
    assert exited.value.code == cli_module.EXIT_USAGE
    assert "the following arguments are required: --user-id" in capsys.readouterr().err


def test_wrong_states_exit_5_with_the_jobs_status(in_process_env, postgres_url, capsys):
    in_process_env(postgres_url)
    data = AppData(get_engine(postgres_url))
    admin = str(data.user("admin"))
    pending = data.export_job(data.campaign())
    _, _, completed = completed_job_in(postgres_url)

    assert cli_module.main(["refresh-url", str(pending), "--user-id", admin]) == 5
    assert capsys.readouterr().err == (
        f"error: export job {pending} is pending: only a completed export has a download URL "
        "to refresh\n"
    )
    assert cli_module.main(["cancel", str(completed), "--user-id", admin]) == 5
    assert capsys.readouterr().err == (
        f"error: export job {completed} is completed: only a pending or running export can be "
        "cancelled\n"
    )
    assert data.job_row(completed)["status"] == "completed"


def test_a_missing_campaign_exits_4(in_process_env, postgres_url, capsys):
    in_process_env(postgres_url)
    manager = str(AppData(get_engine(postgres_url)).user("campaign_manager"))
    missing = uuid.uuid4()
    code = cli_module.main(["list", "--campaign-id", str(missing), "--user-id", manager])
    assert (code, capsys.readouterr().err) == (
        cli_module.EXIT_NOT_FOUND,
        f"error: campaign {missing} does not exist\n",
    )


def test_the_documented_exit_codes_are_the_ones_main_returns():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| `(\d+)` \|", guide, re.MULTILINE)
    assert [int(code) for code in rows] == list(cli_module.EXIT_CODES)


COMMANDS = [
    ("db", "upgrade"),
    ("db", "status"),
    ("request",),
    ("status",),
    ("list",),
    ("refresh-url",),
    ("cancel",),
    ("serve",),
    ("openapi",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_commands_help_names_its_arguments_and_environment(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli_module.main([*command, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    variables = cli_module.ENVIRONMENT[" ".join(command)]
    for line in variables:
        assert f"\n  {line}\n" in shown
        # Every name is a variable something reads: the settings, tokens or AWS's own.
        for name in re.findall(r"[A-Z][A-Z0-9_]+", line):
            assert name in KNOWN_VARIABLES, name
    expected_arguments = {
        "request": ["--campaign-id CAMPAIGN_ID", "--user-id USER_ID", "--bom", "--gzip"],
        "status": ["JOB_ID", "--user-id USER_ID"],
        "list": ["--campaign-id CAMPAIGN_ID", "--user-id USER_ID"],
        "refresh-url": ["JOB_ID", "--user-id USER_ID"],
        "cancel": ["JOB_ID", "--user-id USER_ID"],
        "serve": ["--host HOST", "--port PORT"],
    }.get(" ".join(command), [])
    for argument in expected_arguments:
        assert argument in shown
    if command[0] != "openapi":
        assert "DATABASE_URL" in shown
    assert "exit codes" in shown


KNOWN_VARIABLES = {
    *VARIABLES,
    "AUTH_ISSUER",
    "AUTH_AUDIENCE",
    "AUTH_JWKS_URL",
    "AUTH_JWKS_FILE",
    "AUTH_JWT_SECRET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
}


def test_request_with_an_idempotency_key_prints_the_first_job_again(
    in_process_env, postgres_url, capsys
):
    in_process_env(postgres_url)
    data = AppData(get_engine(postgres_url))
    campaign, manager = str(data.campaign()), str(data.user("campaign_manager"))
    request = ["request", "--campaign-id", campaign, "--user-id", manager]
    jobs = []
    for _ in range(2):
        assert cli_module.main([*request, "--idempotency-key", "nightly-2026-12-07"]) == 0
        jobs.append(json.loads(capsys.readouterr().out)["job_id"])
    assert jobs[0] == jobs[1]
    assert cli_module.main([*request, "--gzip", "--idempotency-key", "nightly-2026-12-07"]) == 5
    assert "Idempotency-Key 'nightly-2026-12-07' was used at" in capsys.readouterr().err
