"""Local stand-ins for production services, for the demo, the end-to-end tests and the
benchmarks: a moto S3 server on loopback and Dagster's processes on one machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psycopg2

from . import process_group

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
LOCAL_REGION = "eu-central-1"


@dataclass(frozen=True)
class Instance:
    """An instance file and the daemon command that goes with it."""

    name: str
    dagster_yaml: Path
    daemon: str  # the executable in the virtualenv's bin folder, run as `<daemon> run`


# Dagster's own launcher, coordinator and compute-log manager, plain `dagster-daemon run`.
DEFAULT = Instance("default", REPO / "deploy" / "dagster.yaml", "dagster-daemon")
# The opt-in fast path (voicesurvey_exports/single_node): forked runs, tightened loops.
SINGLE_NODE = Instance(
    "single-node", REPO / "deploy" / "dagster-single-node.yaml", "voicesurvey-exports-daemon"
)
INSTANCES = {instance.name: instance for instance in (DEFAULT, SINGLE_NODE)}


def start_s3_server(port: int, log_path: Path, env) -> subprocess.Popen:
    """moto's S3 server on 127.0.0.1:port, ready when this returns."""
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return _start_listening(command, log_path, env, None, port, 30, f"the S3 server on {port}")


def _start_listening(
    command: list[str], log_path: Path, env, cwd: Path | None, port: int, timeout: float, what: str
) -> subprocess.Popen:
    """Start a server and wait until it listens on port; stop it if it never does or
    the wait is interrupted (Ctrl-C), as the caller has no handle on it yet."""
    server = process_group.start(command, log_path, env, cwd=cwd)
    try:
        process_group.wait_for(lambda: process_group.port_open(port), timeout, what)
    except BaseException:
        process_group.stop_all([server])
        raise
    return server


def s3_client(endpoint_url: str, region: str = LOCAL_REGION):
    """A boto3 S3 client for the local S3 server, with its local credentials."""
    return boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def create_bucket(endpoint_url: str, bucket: str, region: str = LOCAL_REGION) -> None:
    s3_client(endpoint_url, region).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
    )


def start_dagster(
    home: Path, env, workdir: Path, web_port: int | None = None, daemon: str = DEFAULT.daemon
) -> list[subprocess.Popen]:
    """The daemon (`daemon run`: plain dagster-daemon, or voicesurvey-exports-daemon on
    the fast path) and dagster-webserver if web_port, on workspace.yaml, separately."""
    processes = [
        process_group.start(
            [str(BIN / daemon), "run", "-w", "workspace.yaml"],
            home / "daemon.log",
            env,
            cwd=workdir,
        )
    ]
    if web_port:
        processes.append(
            process_group.start(
                [
                    str(BIN / "dagster-webserver"),
                    "-w",
                    "workspace.yaml",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(web_port),
                ],
                home / "webserver.log",
                env,
                cwd=workdir,
            )
        )
    return processes


def start_http_api(port: int, log_path: Path, env, workdir: Path) -> subprocess.Popen:
    """`voicesurvey-exports serve` on 127.0.0.1:port, ready when this returns."""
    command = [
        str(BIN / "voicesurvey-exports"),
        *("serve", "--host", "127.0.0.1", "--port", str(port)),
    ]
    return _start_listening(command, log_path, env, workdir, port, 60, f"the HTTP API on {port}")


def start_code_server(port: int, log_path: Path, env, workdir: Path) -> subprocess.Popen:
    """`dagster code-server start` serving the definitions over gRPC on 127.0.0.1:port (the
    production layout), ready when this returns."""
    return _start_listening(
        [
            str(BIN / "dagster"),
            "code-server",
            "start",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "voicesurvey_exports.pipeline.definitions",
            "--location-name",
            "voicesurvey_exports",
        ],
        log_path,
        env,
        workdir,
        port,
        120,
        "the code server",
    )


@dataclass
class LocalStack:
    """What `local_stack` started: its settings, folders, ports and processes."""

    home: Path  # DAGSTER_HOME, also the folder of every process's log
    instance: Instance  # which daemon runs (its instance file may be overridden)
    env: dict[str, str]  # the environment every process runs with
    bucket: str
    workspace_dir: Path  # where Dagster's processes run, on its workspace.yaml
    s3_port: int
    web_port: int | None  # None without the webserver
    api_port: int | None  # None without the HTTP API
    processes: list[subprocess.Popen] = field(default_factory=list)  # in start order
    daemon: subprocess.Popen | None = None

    @property
    def s3_endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    @property
    def graphql(self) -> str | None:
        return f"http://127.0.0.1:{self.web_port}/graphql" if self.web_port else None

    @property
    def api(self) -> str | None:
        return f"http://127.0.0.1:{self.api_port}" if self.api_port else None

    def s3_client(self):
        return s3_client(self.s3_endpoint)


@contextlib.contextmanager
def local_stack(
    home: Path,
    settings: Mapping[str, str],
    *,
    bucket: str,
    webserver: bool = True,
    http_api: bool = False,
    instance: Instance = DEFAULT,
    dagster_yaml: Path | None = None,
    workspace_dir: Path = REPO,
    code_server_port: int | None = None,
) -> Iterator[LocalStack]:
    """The real-process stack on loopback, each process in its own group, all stopped on exit:
    a moto S3 server with `bucket` created, a gRPC code server if `code_server_port` (started
    first; the workspace must point at it), dagster-daemon, dagster-webserver if `webserver`
    (ready when this yields), and `voicesurvey-exports serve` if `http_api`.

    `instance` says which instance file and daemon command (default: Dagster's own
    launcher and plain `dagster-daemon run`); `dagster_yaml` replaces its instance file.
    `home` becomes DAGSTER_HOME with a copy of that file; Dagster's processes run in
    `workspace_dir` on its workspace.yaml. `settings` (DATABASE_URL, DAGSTER_POSTGRES_URL, the
    app's settings) go over this process's environment, the S3 endpoint, local credentials
    and S3_BUCKET_NAME.
    """
    shutil.copy(dagster_yaml or instance.dagster_yaml, home / "dagster.yaml")
    s3_port = process_group.free_port()
    stack = LocalStack(
        home=home,
        instance=instance,
        env={
            **os.environ,
            "DAGSTER_HOME": str(home),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            **LOCAL_CREDENTIALS,
            "S3_BUCKET_NAME": bucket,
            **settings,
        },
        bucket=bucket,
        workspace_dir=workspace_dir,
        s3_port=s3_port,
        web_port=process_group.free_port() if webserver else None,
        api_port=process_group.free_port() if http_api else None,
    )
    env, started = stack.env, stack.processes
    try:
        started.append(start_s3_server(s3_port, home / "moto.log", env))
        create_bucket(stack.s3_endpoint, bucket)
        if code_server_port:
            started.append(start_code_server(code_server_port, home / "code-server.log", env, REPO))
        dagster = start_dagster(
            home, env, workspace_dir, web_port=stack.web_port, daemon=instance.daemon
        )
        started += dagster
        stack.daemon = dagster[0]
        if stack.web_port:
            web_port = stack.web_port
            process_group.wait_for(
                lambda: process_group.port_open(web_port), 120, f"the webserver on {web_port}"
            )
        if stack.api_port:
            started.append(start_http_api(stack.api_port, home / "api.log", env, REPO))
        yield stack
    finally:
        process_group.stop_all(started)


def postgres_admin(server_url: str, statement: str) -> None:
    """Run CREATE/DROP DATABASE and the like on the server's postgres database."""
    connection = psycopg2.connect(f"{server_url}/postgres", connect_timeout=3)
    try:
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""
PARTITION_KEYS = """
{ assetNodes(assetKeys: [{path: ["campaign_export"]}]) {
    partitionKeysByDimension { partitionKeys } } }"""


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


RUN_END_TIMES = """
query($runIds: [String!]) {
  runsOrError(filter: {runIds: $runIds}) { ... on Runs { results { runId status endTime } } }
}"""
RUN_TAGS = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }"""


def run_tags(graphql_url: str, run_id: str) -> dict[str, str]:
    run = graphql(graphql_url, RUN_TAGS, {"runId": run_id})["data"]["runOrError"]
    return {tag["key"]: tag["value"] for tag in run.get("tags", [])}


def campaign_partition_keys(graphql_url: str) -> set[str]:
    nodes = graphql(graphql_url, PARTITION_KEYS).get("data", {}).get("assetNodes") or []
    return set(nodes[0]["partitionKeysByDimension"][0]["partitionKeys"]) if nodes else set()


def launch_backfill(graphql_url: str, campaign_ids: list[str]) -> str:
    """Backfill campaign_export over these campaigns the way the UI does; return its id."""
    result = graphql(
        graphql_url,
        LAUNCH_BACKFILL,
        {
            "params": {
                "assetSelection": [{"path": ["campaign_export"]}],
                "partitionNames": campaign_ids,
            }
        },
    )
    launched = result["data"]["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {launched}")
    return launched["backfillId"]
