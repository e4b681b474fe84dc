"""voicesurvey-exports-daemon: Dagster's daemon command line with a shorter sensor loop."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_daemon_entry_point_is_dagster_daemon_with_a_half_second_sensor_loop():
    # In a fresh interpreter, as the installed command runs: the loop constant that
    # Dagster's sensor daemon sleeps by is set before the daemon starts.
    probe = (
        "import dagster._daemon.sensor as s; from voicesurvey_exports.pipeline import daemon; "
        "before = s.MIN_INTERVAL_LOOP_TIME; daemon.tighten_sensor_loop(); "
        "print(before, s.MIN_INTERVAL_LOOP_TIME)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["5", "0.5"]  # Dagster's 5 s, if an upgrade changes it, look again

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
        daemon.tighten_sensor_loop()
