"""ForkingRunLauncher on an instance configured as deploy/dagster-single-node.yaml does:
run monitoring sees a run's worker alive or gone (also a reused pid, or another boot),
and terminating a run whose worker is gone ends it canceled at once. Launching, a worker
killed mid-run and a termination from the UI are in test_faults (real daemon)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.launcher import WorkerStatus
from dagster._core.test_utils import create_run_for_test

from voicesurvey_exports.pipeline import premade_clients
from voicesurvey_exports.pipeline.resources import ExportDestination, build_resources
from voicesurvey_exports.settings import Settings
from voicesurvey_exports.single_node import s3_client
from voicesurvey_exports.single_node.run_launcher import (
    WORKER_BOOT_TAG,
    WORKER_PID_TAG,
    WORKER_START_TAG,
    ForkingRunLauncher,
)

SINGLE_NODE_YAML = Path(__file__).parents[1] / "deploy" / "dagster-single-node.yaml"


@pytest.fixture
def instance():
    launcher = yaml.safe_load(SINGLE_NODE_YAML.read_text())["run_launcher"]
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        assert isinstance(instance.run_launcher, ForkingRunLauncher)
        yield instance


def worker_tags(pid: int) -> dict[str, str]:
    """The tags launch_run records, read off the process as /proc shows it."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start = stat[stat.rindex(")") + 2 :].split()[19]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return {WORKER_PID_TAG: str(pid), WORKER_START_TAG: start, WORKER_BOOT_TAG: boot}


# A stand-in worker that dies of SIGINT (a background shell starts its children with
# SIGINT ignored; Dagster's run worker installs its own handler likewise).
SLEEPER = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def worker():
    process = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def started_run(instance, tags):
    return create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED, tags=tags)


def test_run_monitoring_sees_the_worker_alive_then_gone(instance, worker):
    run = started_run(instance, worker_tags(worker.pid))
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

    worker.kill()
    worker.wait()
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED
    assert f"pid {worker.pid}" in health.msg


@pytest.mark.parametrize(
    "changed", [WORKER_START_TAG, WORKER_BOOT_TAG], ids=["reused-pid", "other-boot"]
)
def test_a_live_process_that_is_not_the_runs_worker_counts_as_gone(instance, worker, changed):
    tags = {**worker_tags(worker.pid), changed: "0"}
    run = started_run(instance, tags)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
    assert worker.poll() is None  # and nothing was done to that process


def test_terminate_signals_the_worker_and_marks_the_run_canceling(instance, worker):
    run = started_run(instance, worker_tags(worker.pid))
    assert instance.run_launcher.terminate(run.run_id)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELING
    # SIGINT, which Dagster's run worker turns into a cancellation.
    assert worker.wait(timeout=10) == -2


def test_terminating_a_run_whose_worker_is_gone_cancels_it_at_once(instance, worker):
    run = started_run(instance, worker_tags(worker.pid))
    worker.kill()
    worker.wait()
    assert instance.run_launcher.terminate(run.run_id)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED


def test_a_finished_run_is_not_terminated(instance, worker):
    run = create_run_for_test(
        instance, status=dg.DagsterRunStatus.SUCCESS, tags=worker_tags(worker.pid)
    )
    assert not instance.run_launcher.terminate(run.run_id)
    assert worker.poll() is None


@pytest.mark.parametrize("tags", [{}, {WORKER_PID_TAG: ""}], ids=["never", "blanked"])
def test_a_run_whose_worker_is_not_recorded_yet_is_left_alone(instance, tags):
    # Being launched (a retry's inherited worker tags are blanked first), or launched
    # before this launcher was configured.
    run = started_run(instance, tags)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert not instance.run_launcher.terminate(run.run_id)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def test_a_worker_that_exited_fails_its_unfinished_run_with_its_exit_status(instance, worker):
    run = started_run(instance, worker_tags(worker.pid))
    worker.kill()
    worker.wait()
    instance.run_launcher._worker_exited(run.run_id, -9)  # as the daemon's watcher does

    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    failure = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records[0]
    assert "was terminated by signal 9 (SIGKILL)" in failure.event_log_entry.dagster_event.message


def test_an_exit_status_of_a_worker_still_running_is_not_believed(instance, worker):
    # The status comes through the forkserver; if the forkserver dies it reports 255
    # for workers that run on.
    run = started_run(instance, worker_tags(worker.pid))
    instance.run_launcher._worker_exited(run.run_id, 255)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


@pytest.fixture
def forkserver_client(monkeypatch, tmp_path):
    """s3_client as the forkserver leaves it, made under the environment set so far:
    credentials in the environment variables, no credentials file, no instance role."""
    monkeypatch.setattr(premade_clients, "_made", {})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def make():
        s3_client.make_for_environment()
        return list(premade_clients._made.values())

    return make


@pytest.mark.parametrize(
    "environment",
    [
        {"AWS_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
        {"AWS_REGION": "us-west-2"},
        {},  # Settings' default region, AWS itself
    ],
    ids=["local-s3", "aws", "defaults"],
)
def test_run_workers_use_the_s3_client_their_forkserver_made(
    environment, forkserver_client, monkeypatch
):
    """Making a client costs a run about 0.1 CPU-seconds: a worker's ExportDestination,
    configured from the same environment by Settings, must use the forkserver's."""
    for name in ("AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"DATABASE_URL": "postgresql://app@db/app", **environment}.items():
        monkeypatch.setenv(name, value)
    [made] = forkserver_client()
    destination = build_resources(Settings.from_env())["destination"]
    assert destination.objects().client is made
    assert made.meta.region_name == Settings.from_env().aws_region


def test_another_s3_configuration_gets_a_client_of_its_own(forkserver_client, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    [made] = forkserver_client()
    other = ExportDestination(
        region_name="us-west-2",
        endpoint_url="http://127.0.0.1:9",
        bucket="b",
        prefix="exports/",
        url_ttl_seconds=60,
        kms_key_id=None,
        retention_days=1,
    )
    client = other.objects().client
    assert client is not made
    assert client.meta.endpoint_url == "http://127.0.0.1:9"


def test_a_bad_s3_configuration_does_not_stop_the_forkserver(forkserver_client, monkeypatch):
    """The workers then make their own client, and their runs report the error."""
    monkeypatch.setenv("AWS_REGION", "not a region!")
    assert forkserver_client() == []


@pytest.mark.parametrize("credentials_file", [True, False], ids=["in-a-file", "none-yet"])
def test_credentials_not_from_the_environment_are_looked_up_by_each_worker(
    credentials_file, forkserver_client, monkeypatch, tmp_path
):
    """A credentials file may be rotated, and credentials may appear after the daemon
    started: a client made once in the forkserver would keep what it found then."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if credentials_file:
        (tmp_path / "no-credentials").write_text(
            "[default]\naws_access_key_id = filekey\naws_secret_access_key = filesecret\n"
        )
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert forkserver_client() == []
