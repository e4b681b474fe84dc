"""voicesurvey-exports-daemon: Dagster's daemon command line with a shorter sensor loop."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_daemon_entry_point_is_dagster_daemon_with_short_sensor_and_backfill_loops():
    # In a fresh interpreter, as the installed command runs: the loop constants that
    # Dagster's sensor and backfill daemons sleep by are set before the daemon starts.
    probe = (
        "import dagster._daemon.sensor as s, dagster._daemon.controller as c; "
        "from voicesurvey_exports.single_node import daemon; "
        "before = (s.MIN_INTERVAL_LOOP_TIME, c.DEFAULT_DAEMON_INTERVAL_SECONDS); "
        "daemon.tighten_daemon_loops(); "
        "print(*before, s.MIN_INTERVAL_LOOP_TIME, c.DEFAULT_DAEMON_INTERVAL_SECONDS)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    # Dagster's 5 s and 30 s: if an upgrade changes them, look again.
    assert out == ["5", "30", "0.5", "5"]

    help_text = subprocess.run(
        [str(BIN / "voicesurvey-exports-daemon"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "run" in help_text and "liveness-check" in help_text


def test_daemon_entry_point_refuses_a_dagster_without_the_loop_constant(monkeypatch):
    import dagster._daemon.sensor as sensor_daemon
    import pytest

    from voicesurvey_exports.single_node import daemon

    monkeypatch.delattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME")
    with pytest.raises(RuntimeError, match="MIN_INTERVAL_LOOP_TIME is gone"):
        daemon.tighten_daemon_loops()


def test_the_daemon_starts_the_run_workers_forkserver_before_any_run(monkeypatch):
    """Dagster makes an instance's run launcher at its first run: the first export
    would wait for the forkserver's imports (about 3 s, 2.5 CPU-seconds)."""
    import dagster as dg
    import yaml
    from dagster._daemon import cli

    from voicesurvey_exports.single_node import daemon, run_launcher

    started, ran = [], []
    monkeypatch.setattr(
        run_launcher.ForkingRunLauncher, "start_forkserver", lambda self: started.append(self)
    )
    monkeypatch.setattr(cli, "_daemon_run_command", lambda instance, *_: ran.append(started[:]))
    daemon.prepare_daemon_instance()
    root_launcher = yaml.safe_load(
        (Path(__file__).parents[1] / "deploy" / "dagster-single-node.yaml").read_text()
    )
    with dg.instance_for_test(
        overrides={"run_launcher": root_launcher["run_launcher"]}
    ) as instance:
        cli._daemon_run_command(instance, "INFO", "INFO", "colored", None)
        # Started once, by the instance's own launcher, before Dagster's daemon ran.
        assert ran == [[instance.run_launcher]]


def test_the_daemon_leaves_other_run_launchers_to_dagster(monkeypatch):
    """The deploy configs' launchers call ECS or Kubernetes when made: made in the
    daemon's loops, as Dagster does, a failure is retried instead of stopping the daemon."""
    import dagster as dg
    from dagster._daemon import cli

    from voicesurvey_exports.single_node import daemon

    made = []
    monkeypatch.setattr(cli, "_daemon_run_command", lambda instance, *_: None)
    daemon.prepare_daemon_instance()
    with dg.instance_for_test() as instance:  # Dagster's default launcher
        monkeypatch.setattr(type(instance), "run_launcher", property(lambda self: made.append(1)))
        cli._daemon_run_command(instance, "INFO", "INFO", "colored", None)
    assert made == []
