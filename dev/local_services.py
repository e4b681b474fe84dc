"""Local stand-ins for production services, for the demo, the end-to-end tests and the
benchmarks: a moto S3 server on loopback and Dagster's processes on one machine."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import psycopg2

from . import process_group

BIN = Path(sys.executable).parent
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


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


def create_bucket(endpoint_url: str, bucket: str, region: str = "eu-central-1") -> None:
    s3 = boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        **{
            "aws_access_key_id": LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        },
    )
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def start_dagster(
    home: Path, env, workdir: Path, web_port: int | None = None
) -> list[subprocess.Popen]:
    """dagster-daemon (and dagster-webserver if web_port) on workspace.yaml, separately."""
    processes = [
        process_group.start(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
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
