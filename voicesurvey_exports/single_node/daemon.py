"""`voicesurvey-exports-daemon`: `dagster-daemon` with loops that keep up with people.

The fast path's daemon command (opt-in, with deploy/dagster-single-node.yaml); Dagster's
own `dagster-daemon run` runs every feature too, at Dagster's pace (docs/operations.md,
"Instance files"). On a Dagster version this folder was not verified with, it refuses to start
(single_node/__init__.py).

Dagster 1.13 has two loop periods that are module constants, not settings:
- the sensor daemon sleeps until 5 s have passed since each loop began
  (`MIN_INTERVAL_LOOP_TIME`), so a sensor whose minimum interval is 1 s still looks only
  every 5 s (the request sensor's waiting tick, pipeline/sensors.py, hides most of that
  from requests on plain dagster-daemon; the failure and cancel sensors keep the 5 s);
- the backfill daemon looks for new backfills every 30 s
  (`DEFAULT_DAEMON_INTERVAL_SECONDS`, also the asset daemon's default interval, which
  this project does not use), so a backfill launched from the UI waited up to 30 s.
This entry point shortens both, has the daemon's instance keep its database connections
open (instance_connections.py), starts the run workers' forkserver (run_launcher.py)
and then runs Dagster's own `dagster-daemon` command line
unchanged (`voicesurvey-exports-daemon run -w ...`). A loop only decides which sensors
and backfills are due; each sensor keeps its own minimum interval.
"""

from __future__ import annotations

# Sensor daemon loop period, seconds: the failure, cancel and other sensors tick every
# 0.5-2 s (their minimum intervals); the request sensor's waiting tick looks for new
# requests nearly all the time on either daemon.
SENSOR_LOOP_SECONDS = 0.5
# Backfill daemon loop period, seconds (an idle iteration is one small query).
BACKFILL_LOOP_SECONDS = 5


def _set(module_name: str, constant: str, value: float) -> None:
    import importlib

    module = importlib.import_module(module_name)
    if not hasattr(module, constant):
        # A Dagster upgrade renamed it: say so rather than silently run at the old pace.
        raise RuntimeError(
            f"{module_name}.{constant} is gone in this Dagster version; "
            "update voicesurvey_exports/single_node/daemon.py"
        )
    setattr(module, constant, value)


def tighten_daemon_loops() -> None:
    _set("dagster._daemon.sensor", "MIN_INTERVAL_LOOP_TIME", SENSOR_LOOP_SECONDS)
    # Read by the backfill loop when it starts, so set before the daemon runs.
    _set("dagster._daemon.controller", "DEFAULT_DAEMON_INTERVAL_SECONDS", BACKFILL_LOOP_SECONDS)


def start_run_workers_forkserver(instance) -> None:
    """Start ForkingRunLauncher's forkserver with the daemon. Dagster makes an instance's
    run launcher at the first run, which would then wait about 3 s and pay 2.5
    CPU-seconds for the forkserver's imports. Other launchers are left to Dagster: the
    deploy configs' (ECS, Kubernetes) call their platform when made, which Dagster
    retries in its loops rather than fail the daemon's start."""
    from . import run_launcher

    configured = instance.get_ref().run_launcher_data
    forking = (run_launcher.__name__, run_launcher.ForkingRunLauncher.__name__)
    if configured is not None and (configured.module_name, configured.class_name) == forking:
        instance.run_launcher.start_forkserver()


def prepare_daemon_instance() -> None:
    """The daemon's one instance keeps its database connections open
    (instance_connections.py) and starts the run workers' forkserver: wrap the function
    the command line hands the instance to."""
    from dagster._daemon import cli

    from .instance_connections import keep_instance_connections

    if not hasattr(cli, "_daemon_run_command"):
        raise RuntimeError(
            "dagster._daemon.cli._daemon_run_command is gone in this Dagster version; "
            "update voicesurvey_exports/single_node/daemon.py"
        )
    run_daemon = cli._daemon_run_command

    def run_prepared(instance, *args, **kwargs):
        keep_instance_connections(instance)
        start_run_workers_forkserver(instance)
        return run_daemon(instance, *args, **kwargs)

    cli._daemon_run_command = run_prepared


def main() -> None:
    tighten_daemon_loops()
    prepare_daemon_instance()
    from dagster._daemon.cli import main as dagster_daemon_main

    dagster_daemon_main()


if __name__ == "__main__":
    main()
