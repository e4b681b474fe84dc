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
        "from voicesurvey_exports.pipeline import daemon; "
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

    from voicesurvey_exports.pipeline import daemon

    monkeypatch.delattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME")
    with pytest.raises(RuntimeError, match="MIN_INTERVAL_LOOP_TIME is gone"):
        daemon.tighten_daemon_loops()
