"""deploy/: every configuration file passes Dagster's own validation, and the
production layout runs as separate processes (gRPC code server, daemon, webserver)
on one PostgreSQL instance database within its run queue limits."""

from __future__ import annotations

import importlib
import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.utils import parse_env_var
from sqlalchemy import text

from dev import local_services
from dev import process_group as processes
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.settings import VARIABLES

from .conftest import TEST_BUCKET, AppData

REPO = Path(__file__).resolve().parents[1]
INSTANCE_FILES = [
    REPO / "deploy/dagster.yaml",
    REPO / "deploy/dagster-single-node.yaml",
    REPO / "deploy/dagster-ecs.yaml",
    REPO / "deploy/dagster-k8s.yaml",
    REPO / "deploy/dagster-docker.yaml",
]
# Each run in a container of its own: nothing may depend on a disk the runs share.
CONTAINER_INSTANCE_FILES = [
    REPO / "deploy/dagster-ecs.yaml",
    REPO / "deploy/dagster-k8s.yaml",
    REPO / "deploy/dagster-docker.yaml",
]
BUCKET = "deploy-exports"


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_instance_configuration_is_valid(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql://dagster@db/dagster")
    shutil.copy(path, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # the instance schema, env included
    launcher = config.get("run_launcher")
    if launcher:  # its own schema (without contacting ECS or Kubernetes), defaults applied
        cls = getattr(importlib.import_module(launcher["module"]), launcher["class"])
        result = process_config(cls.config_type(), launcher.get("config", {}))
        assert result.success, [error.message for error in result.errors]


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_instance_purges_old_sensor_and_schedule_ticks(path, tmp_path, monkeypatch):
    """Each of the sensors ticks every few seconds; kept forever, ticks would grow the
    instance database by tens of thousands of rows a day (17,280 for a tick every 5 s)."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.instance.config import (
        get_default_tick_retention_settings,
        get_tick_retention_settings,
    )

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql://dagster@db/dagster")
    shutil.copy(path, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    for instigator, key in (
        (InstigatorType.SENSOR, "sensor"),
        (InstigatorType.SCHEDULE, "schedule"),
    ):
        # Resolved as the instance resolves it: Dagster's defaults, then the file's values.
        days = get_tick_retention_settings(
            config.get("retention", {}).get(key), get_default_tick_retention_settings(instigator)
        )
        assert all(0 < n <= 90 for n in days.values()), (path.name, key, days)


@pytest.mark.parametrize("name", ["workspace.yaml", "deploy/workspace.yaml"])
def test_workspace_files_name_the_code_location(name):
    (entry,) = yaml.safe_load((REPO / name).read_text())["load_from"]
    target = entry.get("python_module") or entry.get("grpc_server")
    assert target["location_name"] == "voicesurvey_exports"


def test_ecs_run_tasks_get_the_databases_and_only_settings_every_deployment_sets(monkeypatch):
    config = yaml.safe_load((REPO / "deploy/dagster-ecs.yaml").read_text())
    passed_on = config["run_launcher"]["config"]["env_vars"]
    assert (
        {"DATABASE_URL", "DAGSTER_POSTGRES_URL"}
        <= {entry.split("=")[0] for entry in passed_on}
        <= {
            *VARIABLES,
            "DAGSTER_POSTGRES_URL",
        }
    )
    # EcsRunLauncher reads each listed name from the daemon's environment and refuses
    # to launch when one is unset: with just the two required ones set, all resolve.
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql://dagster@db/dagster")
    assert dict(map(parse_env_var, passed_on))["DATABASE_URL"] == "postgresql://app@db/app"


@pytest.mark.parametrize("path", CONTAINER_INSTANCE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_container_deployments_keep_op_outputs_and_run_logs_in_s3_not_on_a_shared_disk(path):
    """A retry or a re-execution runs in a new container: it loads the failed run's op
    outputs from S3, and the UI reads a finished run's logs from S3, not from the disk of
    a container that is gone."""
    config = yaml.safe_load(path.read_text())
    assert "local_artifact_storage" not in config
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    assert config["compute_logs"]["config"]["bucket"] == {"env": "S3_BUCKET_NAME"}
    runs_get = dict(map(parse_env_var, config["run_launcher"]["config"]["env_vars"][-1:]))
    assert runs_get == {"EXPORT_IO_STORAGE": "s3"}


def test_compose_gives_the_daemon_every_setting_the_docker_launcher_passes_to_runs():
    """DockerRunLauncher copies each name of its env_vars from the daemon's environment
    into the run container, and refuses to launch any run when one is unset."""
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    launcher = yaml.safe_load((REPO / "deploy/dagster-docker.yaml").read_text())
    launcher = launcher["run_launcher"]["config"]
    daemon = compose["services"]["daemon"]
    names = {entry for entry in launcher["env_vars"] if "=" not in entry}
    assert names <= set(daemon["environment"])
    # The runs join the compose network, where the code server and PostgreSQL are.
    assert launcher["networks"] == [compose["networks"]["default"]["name"]]
    code_server = compose["services"]["exports-code-server"]
    assert code_server["environment"]["DAGSTER_CURRENT_IMAGE"] == daemon["image"]
    workspace = yaml.safe_load((REPO / "deploy/workspace.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["host"] == "exports-code-server"
    # The daemon reaches Docker; nothing else gets the socket.
    for name, service in compose["services"].items():
        mounts_socket = any("docker.sock" in volume for volume in service.get("volumes", []))
        assert mounts_socket == (name == "daemon"), name


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _snake_keys(value):
    """The Helm chart's camelCase values as the dagster.yaml it renders spells them."""
    if isinstance(value, dict):
        return {_snake(key): _snake_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_snake_keys(item) for item in value]
    return value


def test_helm_values_configure_the_chart_as_dagster_k8s_yaml_configures_the_instance():
    """deploy/helm-values.yaml (Dagster's chart) and dagster-k8s.yaml (a ConfigMap of our
    own) must not drift: the same queue limits, retries, monitoring, retention, S3 run
    logs, and runs that keep their op outputs in S3; each part valid for its class."""
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher

    values = yaml.safe_load((REPO / "deploy/helm-values.yaml").read_text())
    k8s = yaml.safe_load((REPO / "deploy/dagster-k8s.yaml").read_text())
    daemon = values["dagsterDaemon"]

    concurrency = _snake_keys(values["concurrency"])
    assert concurrency.pop("enabled") is True
    # Tag values are passed through as written (applyLimitPerUniqueValue stays camelCase).
    for limit in concurrency["runs"]["tag_concurrency_limits"]:
        if "value" in limit:
            limit["value"] = {"applyLimitPerUniqueValue": True}
    assert concurrency == k8s["concurrency"]
    queue = _snake_keys(daemon["runCoordinator"]["config"]["queuedRunCoordinator"])
    assert k8s["run_queue"] == queue
    assert _snake_keys(daemon["runMonitoring"]) == k8s["run_monitoring"]
    assert _snake_keys(daemon["runRetries"]) == k8s["run_retries"]
    assert _snake_keys(daemon["sensors"]) == k8s["sensors"]
    retention = _snake_keys(values["retention"])
    assert retention.pop("enabled") is True
    assert retention == k8s["retention"]

    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    logs = _snake_keys(values["computeLogManager"]["config"]["s3ComputeLogManager"])
    assert {k: v for k, v in logs.items() if k != "bucket"} == {
        k: v for k, v in k8s["compute_logs"]["config"].items() if k != "bucket"
    }
    assert process_config(S3ComputeLogManager.config_type(), logs).success

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = _snake_keys(values["runLauncher"]["config"]["k8sRunLauncher"])
    assert launcher["env_vars"] == k8s["run_launcher"]["config"]["env_vars"]
    assert launcher["run_k8s_config"] == k8s["run_launcher"]["config"]["run_k8s_config"]
    launcher["env_secrets"] = [secret["name"] for secret in launcher["env_secrets"]]
    result = process_config(
        K8sRunLauncher.config_type(),
        {**launcher, "instance_config_map": "dagster-instance", "job_namespace": "exports"},
    )
    assert result.success, [error.message for error in result.errors]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == [
        "--module-name",
        "voicesurvey_exports.pipeline.definitions",
    ]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


def test_lifecycle_rule_expires_exports_after_retention_and_aborts_stale_uploads(s3_client):
    from voicesurvey_exports.settings import DEFAULTS

    rules = json.loads((REPO / "deploy/s3-lifecycle.json").read_text())
    s3_client.put_bucket_lifecycle_configuration(  # S3 (moto) accepts it as written
        Bucket=TEST_BUCKET, LifecycleConfiguration=rules
    )
    rules = s3_client.get_bucket_lifecycle_configuration(Bucket=TEST_BUCKET)["Rules"]
    (rule,) = [rule for rule in rules if rule["Filter"]["Prefix"] == DEFAULTS["S3_EXPORT_PREFIX"]]
    assert rule["Status"] == "Enabled"
    assert rule["Filter"]["Prefix"] == DEFAULTS["S3_EXPORT_PREFIX"]
    # A backstop: later than the retention job, so a live link is never expired by it.
    assert rule["Expiration"]["Days"] > int(DEFAULTS["EXPORT_RETENTION_DAYS"])
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    # The runs' op outputs and logs (dagster/io, dagster/logs) do not pile up for ever.
    (runs,) = [rule for rule in rules if rule["Filter"]["Prefix"] == "dagster/"]
    assert runs["Status"] == "Enabled" and runs["Expiration"]["Days"] >= 30


def run_overlap(records) -> int:
    """The most runs that were ever in progress at once, from Dagster's run records."""
    edges = []
    for record in records:
        if record.start_time and record.end_time:
            edges += [(record.start_time, 1), (record.end_time, -1)]
    current = peak = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        current += step
        peak = max(peak, current)
    return peak


@pytest.mark.e2e
@pytest.mark.soak  # minutes of runs: in `make soak`, which CI runs too
def test_code_server_daemon_and_webserver_complete_queued_requests_within_queue_limits(
    stack_databases, tmp_path, monkeypatch
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance_config = yaml.safe_load((REPO / "deploy/dagster-ecs.yaml").read_text())
    instance_config.pop("run_launcher")  # the default launcher stands in for ECS
    limit = 4  # low enough that the requests must queue
    # Ten times the limit: every run but the first few waits in Dagster's queue. (100 took
    # longer than the 15-minute bound on 2026-12-07's machine, 1.4x slower than others.)
    requests = 40
    instance_config["concurrency"]["runs"]["max_concurrent_runs"] = limit
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    code_port = processes.free_port()
    workspace = yaml.safe_load((REPO / "deploy/workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=code_port)
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    settings = {**stack_databases("deploy"), "EXPORT_SENSOR_INTERVAL_SECONDS": "1"}
    with local_services.local_stack(
        home,
        settings,
        bucket=BUCKET,
        dagster_yaml=tmp_path / "dagster.yaml",
        workspace_dir=tmp_path,
        code_server_port=code_port,
    ) as stack:
        app = AppData(get_engine(settings["DATABASE_URL"]))
        manager = app.user("campaign_manager")
        campaigns = [app.campaign(f"Deploy {i}") for i in range(10)]
        for campaign in campaigns:
            app.contact(campaign, "completed")
        with app.engine.begin() as conn:
            for i in range(requests):
                conn.execute(
                    text(
                        "INSERT INTO export_jobs (id, campaign_id, requested_by_user_id) "
                        "VALUES (:id, :campaign, :user)"
                    ),
                    {"id": uuid.uuid4(), "campaign": campaigns[i % 10], "user": manager},
                )

        def counts():
            with app.engine.connect() as conn:
                return dict(
                    conn.execute(
                        text("SELECT status, count(*) FROM export_jobs GROUP BY status")
                    ).all()
                )

        processes.wait_for(
            lambda: counts().get("completed") == requests,
            900,
            f"{requests} completed export jobs",
            interval=3,
        )
        assert processes.port_open(stack.web_port)

        # A job row is completed by the run's last op, a moment before the run itself
        # ends: stopping the stack at once could cut the last runs short.
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", settings["DAGSTER_POSTGRES_URL"])
        with DagsterInstance.from_config(str(home)) as instance:

            def finished_runs():
                # The export runs only: the daily retention schedule (03:15 UTC) may fire
                # while this test runs, and its run is none of the requests'.
                records = [
                    record
                    for record in instance.get_run_records()
                    if record.dagster_run.job_name == "campaign_export_job"
                ]
                if len(records) >= requests and all(r.dagster_run.is_finished for r in records):
                    return records  # a retried run would make more: asserted below
                return None

            records = processes.wait_for(finished_runs, 120, "the finished runs", interval=1)

    assert len(records) == requests
    unsuccessful = [
        (r.dagster_run.run_id, r.dagster_run.status.value)
        for r in records
        if not r.dagster_run.is_success
    ]
    assert unsuccessful == []
    assert 1 < run_overlap(records) <= limit
    by_campaign: dict[str, list] = {}
    for record in records:
        by_campaign.setdefault(record.dagster_run.tags["dagster/partition"], []).append(record)
    assert max(run_overlap(runs) for runs in by_campaign.values()) <= 2
