"""Every run in its own container, for real: the production image (`make image`) as the
code server, daemon and webserver containers of deploy/dagster-docker.yaml, runs launched
by DockerRunLauncher, against this machine's PostgreSQL and a moto S3 server, all on
loopback (host networking). `make test-containers`; needs a Docker daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import text

from dev import container_stack as containers
from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine

from .conftest import AppData

REPO = Path(__file__).resolve().parents[1]
BUCKET = "container-exports"
CONTAINER_TAG = "docker/container_id"  # DockerRunLauncher's tag on each run
REQUESTS = 20
LARGE_CAMPAIGN_ROWS = 300_000  # long enough an export to kill its container midway

RUN_LOGS = """
query($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on LogsCapturedEvent { fileKey }
        ... on ExecutionStepSuccessEvent { stepKey }
      }
    }
  }
}"""
CAPTURED_LOGS = """
query($logKey: [String!]!) { capturedLogs(logKey: $logKey) { stdout stderr } }"""
RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { status parentRunId rootRunId tags { key value } }
  }
}"""


def docker_or_skip() -> None:
    missing = containers.docker_missing()
    if missing:
        if os.environ.get("REQUIRE_DOCKER"):
            pytest.fail(f"REQUIRE_DOCKER=1 but {missing}")
        pytest.skip(missing)


def run_info(graphql_url: str, run_id: str) -> dict:
    run = local_services.graphql(graphql_url, RUN, {"runId": run_id})["data"]["runOrError"]
    run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
    return run


def insert_contacts(engine, campaign_id: uuid.UUID, count: int) -> None:
    """Many terminal contacts at once (one INSERT), for an export that takes a while."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contacts (id, campaign_id, phone_number, state, attempts_count) "
                "SELECT gen_random_uuid(), :campaign, '+39055' || lpad(n::text, 7, '0'), "
                "'completed', 1 FROM generate_series(1, :count) AS n"
            ),
            {"campaign": campaign_id, "count": count},
        )


def request_export(engine, campaign_id: uuid.UUID, user_id: uuid.UUID) -> uuid.UUID:
    """The app's way: a pending export_jobs row, which the request sensor picks up."""
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO export_jobs (id, campaign_id, requested_by_user_id) "
                "VALUES (:id, :campaign, :user)"
            ),
            {"id": job_id, "campaign": campaign_id, "user": user_id},
        )
    return job_id


def job_rows(engine, job_ids) -> dict[uuid.UUID, dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM export_jobs WHERE id = ANY(:ids)"), {"ids": list(job_ids)}
        ).mappings()
        return {row["id"]: dict(row) for row in rows}


def docker_resources(client) -> tuple[set, set, set]:
    return (
        {c.id for c in client.containers.list(all=True)},
        {n.id for n in client.networks.list()},
        {v.id for v in client.volumes.list()},
    )


def test_the_image_build_says_in_one_line_that_docker_is_missing(tmp_path):
    result = subprocess.run(
        ["bash", "scripts/build-image.sh"],
        cwd=REPO,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    if shutil.which("docker"):
        expected = (
            f"make image: no Docker daemon answers on unix://{tmp_path}/no-docker.sock "
            "(start dockerd, or install docker.io)"
        )
    else:
        expected = "make image: the docker command is missing (apt-get install docker.io)"
    assert result.stderr.strip().splitlines() == [expected]


@pytest.mark.containers
def test_the_image_runs_as_non_root_with_the_locked_runtime_set_and_no_secrets():
    docker_or_skip()
    import docker

    client = docker.from_env(timeout=120)
    image = containers.image_tag()
    output = client.containers.run(
        image,
        [
            "sh",
            "-c",
            "id -u; for c in python3 dagster dagster-daemon dagster-webserver "
            "voicesurvey-exports-daemon; do command -v $c; done; python3 --version; "
            "pip list --format=freeze",
        ],
        network_mode="none",
        remove=True,
    ).decode()
    lines = output.splitlines()
    assert lines[0] == "10001"
    assert [line.rsplit("/", 1)[-1] for line in lines[1:6]] == [
        "python3",
        "dagster",
        "dagster-daemon",
        "dagster-webserver",
        "voicesurvey-exports-daemon",
    ]
    assert lines[6].startswith("Python 3.11.")
    installed = {
        canonicalize_name(name): version
        for name, version in (line.split("==", 1) for line in lines[7:] if "==" in line)
    }
    # Exactly uv.lock's runtime set (no dev extras), plus the project and pip itself.
    exported = subprocess.run(
        [
            str(REPO / ".local/uv/bin/uv"),
            "export",
            "--locked",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
            "--format",
            "requirements-txt",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The pins whose markers hold in the image (Linux, CPython 3.11).
    target = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
    locked = {}
    for line in exported.splitlines():
        if "==" in line and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(target):
                locked[canonicalize_name(requirement.name)] = str(requirement.specifier)[2:]
    installed.pop("pip", None)
    assert installed.pop("voicesurvey-exports") == containers.image_tag().split(":")[1]
    assert installed == locked
    assert "pytest" not in installed and "moto" not in installed
    # No secret baked in: the environment names only paths and Python's and Dagster's own.
    env = dict(item.split("=", 1) for item in client.images.get(image).attrs["Config"]["Env"])
    assert set(env) <= {
        "PATH",
        "LANG",
        "PYTHONUNBUFFERED",
        "DAGSTER_HOME",
        "PYTHON_VERSION",
        "GPG_KEY",
        "PYTHON_SHA256",
        "PYTHON_PIP_VERSION",
        "PYTHON_GET_PIP_URL",
        "PYTHON_GET_PIP_SHA256",
        "PYTHON_SETUPTOOLS_VERSION",
    }
    client.close()


@pytest.mark.containers
def test_the_image_build_says_in_one_line_that_the_package_index_is_unreachable(tmp_path):
    docker_or_skip()
    result = subprocess.run(
        ["bash", "scripts/build-image.sh"],
        cwd=REPO,
        env={
            **os.environ,
            # A fresh download folder, and an index nothing answers on.
            "IMAGE_BUILD_DIR": str(tmp_path / "image"),
            "BASE_IMAGE": "voicesurvey-exports-base:bookworm",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
            "PIP_FIND_LINKS": "",
            "PIP_RETRIES": "0",
            "PIP_TIMEOUT": "2",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("make image: downloading the runtime wheels failed"), line


@pytest.mark.containers
@pytest.mark.e2e
@pytest.mark.postgres
def test_every_export_runs_in_its_own_container_survives_a_killed_container_and_leaves_nothing(
    stack_databases, tmp_path
):
    docker_or_skip()
    import docker

    client = docker.from_env(timeout=120)
    before = docker_resources(client)
    settings = stack_databases("containers")
    app = AppData(get_engine(settings["DATABASE_URL"]))
    manager = app.user("campaign_manager")
    campaigns = [app.campaign(f"Container {i}") for i in range(REQUESTS)]
    for campaign in campaigns:
        for state in ("completed", "refused", "pending"):  # the first two are exported
            app.contact(campaign, state)
    large = app.campaign("Large")
    insert_contacts(app.engine, large, LARGE_CAMPAIGN_ROWS)

    with containers.container_stack(tmp_path, settings, bucket=BUCKET) as stack:
        # 20 requests the app's way: each becomes a run in a container of its own.
        job_ids = [request_export(app.engine, c, manager) for c in campaigns]
        processes.wait_for(
            lambda: all(
                row["status"] == "completed" for row in job_rows(app.engine, job_ids).values()
            ),
            420,
            f"{REQUESTS} completed export jobs",
            interval=2,
        )
        rows = job_rows(app.engine, job_ids)
        assert {row["total_records"] for row in rows.values()} == {2}
        runs = {
            row["dagster_run_id"]: run_info(stack.graphql, row["dagster_run_id"])
            for row in rows.values()
        }
        assert len(runs) == REQUESTS
        container_ids = {run["tags"].get(CONTAINER_TAG) for run in runs.values()}
        assert None not in container_ids and len(container_ids) == REQUESTS
        # None of them on a daemon's or code server's container.
        assert not container_ids & {c.id for c in stack.containers}

        # A run's logs through the webserver, from S3: its container is gone (removed
        # when it exited), and so is anything it had on its disk.
        some_run = next(iter(runs))
        processes.wait_for(
            lambda: run_info(stack.graphql, some_run)["status"] == "SUCCESS", 60, "run end"
        )
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(runs[some_run]["tags"][CONTAINER_TAG])
        events = local_services.graphql(stack.graphql, RUN_LOGS, {"runId": some_run})
        (file_key,) = {
            event["fileKey"]
            for event in events["data"]["logsForRun"]["events"]
            if event["__typename"] == "LogsCapturedEvent"
        }
        logs = local_services.graphql(
            stack.graphql, CAPTURED_LOGS, {"logKey": [some_run, "compute_logs", file_key]}
        )["data"]["capturedLogs"]
        assert "record_export" in logs["stderr"]  # Dagster's own lines about the run's steps
        stored = stack.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="dagster/logs/")
        assert any(some_run in item["Key"] for item in stored.get("Contents", []))

        # A run container killed mid-export, once its first op is done: the run fails,
        # run retries start it again in a new container (max_retries: 1), which loads the
        # first op's outputs from S3, extracts again the spool file the killed container
        # had, and completes the same export job.
        large_job = request_export(app.engine, large, manager)

        def extracted_in_run_container():
            row = job_rows(app.engine, [large_job])[large_job]
            if row["status"] != "running" or not row["dagster_run_id"]:
                return None
            run_id = row["dagster_run_id"]
            events = local_services.graphql(stack.graphql, RUN_LOGS, {"runId": run_id})
            steps = {
                event.get("stepKey", "").rsplit(".", 1)[-1]
                for event in events["data"]["logsForRun"]["events"]
                if event["__typename"] == "ExecutionStepSuccessEvent"
            }
            if "extract_terminal_contacts" not in steps:
                return None
            return run_id, run_info(stack.graphql, run_id)["tags"][CONTAINER_TAG]

        killed_run, killed_container = processes.wait_for(
            extracted_in_run_container, 180, "the large export's extract step", interval=0.2
        )
        client.containers.get(killed_container).kill()
        killed_at = time.monotonic()
        processes.wait_for(
            lambda: (
                job_rows(app.engine, [large_job])[large_job]["status"] in ("completed", "failed")
            ),
            300,
            "the large export's job to end",
            interval=2,
        )
        row = job_rows(app.engine, [large_job])[large_job]
        assert (row["status"], row["total_records"]) == ("completed", LARGE_CAMPAIGN_ROWS), row[
            "error_message"
        ]
        assert run_info(stack.graphql, killed_run)["status"] == "FAILURE"
        retry = run_info(stack.graphql, row["dagster_run_id"])
        assert row["dagster_run_id"] != killed_run
        assert retry["parentRunId"] == killed_run
        assert retry["tags"][CONTAINER_TAG] not in (killed_container, *container_ids)
        took = time.monotonic() - killed_at
        print(f"killed run {killed_run} completed by its retry {took:.0f} s after the kill")

        # Wait for the last runs' containers to exit (each removes itself).
        processes.wait_for(
            lambda: [c for c in stack.labelled() if c not in stack.containers] == [],
            120,
            "the run containers to exit",
        )

    # Nothing left: no container (of the stack or its runs), network or volume.
    after = docker_resources(client)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (
        set(),
        set(),
        set(),
    )
    client.close()
