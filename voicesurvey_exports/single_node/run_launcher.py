"""ForkingRunLauncher: each run in a process forked from one that has Dagster loaded.

Dagster's DefaultRunLauncher asks the code server to spawn a new Python process per run,
which imports Dagster's run worker, dagster-aws, pandas and SQLAlchemy before the first
op: about 2 s and 2.5 CPU-seconds of every small export. This launcher keeps one
multiprocessing forkserver, started by the daemon, that has imported those libraries
once (`preload_modules`), and made the workers' S3 client (s3_client.py); each run is a
fork of it that imports only this project's modules (about 0.1 s, read from disk, so new
code is picked up run by run as before) and executes the run exactly as `dagster api
execute_run` does.

It replaces what the code server did for its run processes:
- launch: fork, record the worker's pid on the run (tags), Dagster's "Started process
  for run" event follows from the worker itself;
- crash: the daemon watches its workers; one that exits while its run is unfinished
  fails the run with the exit status within about a second (so run retries apply), and
  run monitoring checks the recorded pid, which also covers workers the daemon forked
  before a restart;
- terminate (UI, API): the run is marked canceling and its worker gets SIGINT, which
  Dagster turns into a clean cancellation; a worker that is already gone ends the run
  canceled at once.
The workers are processes of the daemon's machine: configure this launcher for one
machine only (deploy/dagster-single-node.yaml, with `voicesurvey-exports-daemon run`,
which starts the forkserver); deploy/dagster.yaml keeps Dagster's own launcher and the
ECS and Kubernetes configs their platform's.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._serdes import ConfigurableClass, ConfigurableClassData

# Tags on the run naming its worker: pid, the process's start time (clock ticks after
# boot, so a reused pid is not mistaken for it) and the boot it belongs to.
WORKER_PID_TAG = "voicesurvey/run_worker_pid"
WORKER_START_TAG = "voicesurvey/run_worker_start"
WORKER_BOOT_TAG = "voicesurvey/run_worker_boot"
WORKER_TAGS = (WORKER_PID_TAG, WORKER_START_TAG, WORKER_BOOT_TAG)
LOGGER = logging.getLogger("dagster.run_launcher")

# What a run worker imports, bar this project's own modules (listed from a worker's
# sys.modules: the second group, about 0.1 CPU-seconds, was imported in every run).
DEFAULT_PRELOAD = (
    "dagster._cli.api",
    "dagster._core.execution.api",
    "dagster._grpc.impl",
    "dagster_aws.s3",
    "boto3",
    "pandas",
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "psycopg2",
    # The instance's storage, the in-process executor, the IO manager's paths, the
    # render's and the upload's modules.
    "dagster_postgres",
    "dagster._core.executor.in_process",
    "dagster._core.execution.plan.active",
    "upath.implementations.local",
    "psycopg2.extras",
    "pyarrow.csv",
    "pyarrow.pandas_compat",
    "boto3.s3.transfer",
)
# Imported after the preload modules: freezes their objects for the garbage collector.
FREEZE_MODULE = "voicesurvey_exports.single_node.forkserver_ready"
# How often the daemon looks for workers that exited.
WATCH_SECONDS = 1.0


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks after boot, or None if it is gone or a
    zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X") else start


def _run_worker(run_id: str, serialized_instance_ref: str) -> None:
    """The forked process: what `dagster api execute_run` does, in this process."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

    from .instance_connections import keep_instance_connections

    setup_interrupt_handlers()  # SIGTERM as SIGINT, as in Dagster's CLI
    with capture_interrupts():
        instance_ref = deserialize_value(serialized_instance_ref, InstanceRef)
        with DagsterInstance.from_ref(instance_ref) as instance:
            keep_instance_connections(instance)  # not one connection per event written
            _execute_run_command_body(
                run_id, instance, lambda _event: None, set_exit_code_on_failure=False
            )


class ForkingRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as a fork of a preloaded forkserver (see the module docstring).

    dagster.yaml (deploy/dagster-single-node.yaml):
        run_launcher:
          module: voicesurvey_exports.single_node.run_launcher
          class: ForkingRunLauncher
    """

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        preload_modules: Sequence[str] = DEFAULT_PRELOAD,
    ):
        self._inst_data = inst_data
        self._preload_modules = list(preload_modules)
        self._workers: dict[str, multiprocessing.process.BaseProcess] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        from dagster import Array, Field

        return {
            "preload_modules": Field(
                Array(str),
                is_required=False,
                default_value=list(DEFAULT_PRELOAD),
                description="Modules the forkserver imports once for every run.",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def _context(self):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([*self._preload_modules, FREEZE_MODULE])
        return context

    def start_forkserver(self) -> None:
        """Start the forkserver now (it imports the preload modules in the background),
        so that the first run does not wait for it: `voicesurvey-exports-daemon` does at
        its start (daemon.py). The webserver, which only terminates runs, never does."""
        from multiprocessing import forkserver

        self._context()
        forkserver.ensure_running()

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._serdes import serialize_value

        run = context.dagster_run
        # A retry or re-execution inherits its parent's tags: blank the parent's worker
        # (until this run's is recorded, monitoring and terminate see no worker yet).
        if run.tags.get(WORKER_PID_TAG):
            self._instance.add_run_tags(run.run_id, dict.fromkeys(WORKER_TAGS, ""))
        worker = self._context().Process(
            target=_run_worker,
            args=(run.run_id, serialize_value(self._instance.get_ref())),
            name=f"dagster-run-{run.run_id}",
        )
        worker.start()
        # Not a child multiprocessing waits for: the daemon's exit would join it (a
        # restart would wait for every export), and start() would poll it beside the
        # watcher. The watcher is its only reader.
        multiprocessing.process._children.discard(worker)  # noqa: SLF001
        pid = worker.pid
        assert pid is not None
        with self._lock:
            self._workers[run.run_id] = worker
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="run-worker-watcher", daemon=True
                )
                self._watcher.start()
        self._instance.add_run_tags(
            run.run_id,
            {
                WORKER_PID_TAG: str(pid),
                WORKER_START_TAG: _process_start(pid) or "",
                WORKER_BOOT_TAG: _boot_id(),
            },
        )

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            with self._lock:
                exited = {
                    run_id: worker
                    for run_id, worker in self._workers.items()
                    if not worker.is_alive()
                }
                for run_id in exited:
                    del self._workers[run_id]
            for run_id, worker in exited.items():
                # An exception here must not stop the watcher; the next run-monitoring
                # pass finds the dead worker through its tags.
                try:
                    self._worker_exited(run_id, worker.exitcode)
                except Exception:
                    LOGGER.exception(f"could not report the exit of run {run_id}'s worker")

    def _worker_exited(self, run_id: str, exit_code: int | None) -> None:
        from dagster._core.storage.dagster_run import DagsterRunStatus
        from dagster._utils import get_run_crash_explanation

        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        if self._live_worker_pid(run.tags) is not None:
            # The exit status comes through the forkserver; if the forkserver died, the
            # status is made up while the worker runs on. Run monitoring watches it.
            return
        message = get_run_crash_explanation(
            prefix=f"Run worker for {run_id}", exit_code=exit_code if exit_code is not None else -1
        )
        self._instance.report_engine_event(message, run, cls=self.__class__)
        if run.status == DagsterRunStatus.CANCELING:
            self._instance.report_run_canceled(run)
        else:
            self._instance.report_run_failed(run, message)

    def _live_worker_pid(self, tags: Mapping[str, str]) -> int | None:
        """The run's worker pid if that very process is still running on this machine."""
        pid = tags.get(WORKER_PID_TAG)
        if not pid or tags.get(WORKER_BOOT_TAG) != _boot_id():
            return None
        start = _process_start(int(pid))
        return int(pid) if start is not None and start == tags.get(WORKER_START_TAG) else None

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        if not run.tags.get(WORKER_PID_TAG):
            # Being launched (the tags follow the fork), or launched by another launcher
            # before this one was configured: nothing to check it by.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker recorded yet")
        pid = self._live_worker_pid(run.tags)
        if pid is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker (pid {run.tags.get(WORKER_PID_TAG)}) is no longer running",
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        if not run.tags.get(WORKER_PID_TAG):
            self._instance.report_engine_event(
                "Run worker not recorded yet (being launched); try again.", run, cls=self.__class__
            )
            return False
        # Canceling first: the worker reads the status when the interrupt arrives.
        self._instance.report_run_canceling(run)
        pid = self._live_worker_pid(run.tags)
        try:
            if pid is None:
                raise ProcessLookupError
            os.kill(pid, signal.SIGINT)  # as the code server does: Dagster cancels the run
        except ProcessLookupError:
            # The worker is gone: canceled now rather than after cancel_timeout_seconds.
            self._instance.report_run_canceled(run)
        return True

    def dispose(self) -> None:
        # Workers are not waited for: the daemon stops at once, and a worker runs on
        # (unless what stops the daemon stops its whole process group, as Ctrl-C does).
        self._stop.set()
