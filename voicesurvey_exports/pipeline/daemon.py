"""`voicesurvey-exports-daemon`: `dagster-daemon` with a sensor loop that keeps up with people.

Dagster 1.13's sensor daemon sleeps until five seconds have passed since each loop began
(`MIN_INTERVAL_LOOP_TIME`, a module constant with no setting), so a sensor whose
minimum interval is 1 s still looks only every 5 s: on average 2.5 s of every export
request's wait. This entry point shortens that loop and then runs Dagster's own
`dagster-daemon` command line unchanged (`voicesurvey-exports-daemon run -w ...`).
A loop only decides which sensors are due; each sensor keeps its own minimum interval.
"""

from __future__ import annotations

# Sensor daemon loop period, seconds. The request sensor runs every
# EXPORT_SENSOR_INTERVAL_SECONDS (default 1), so it fires within 1-1.5 s.
SENSOR_LOOP_SECONDS = 0.5


def tighten_sensor_loop(seconds: float = SENSOR_LOOP_SECONDS) -> None:
    import dagster._daemon.sensor as sensor_daemon

    if not hasattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME"):
        # A Dagster upgrade renamed it: say so rather than silently run at 5 s.
        raise RuntimeError(
            "dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME is gone in this Dagster version; "
            "update voicesurvey_exports/pipeline/daemon.py"
        )
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = seconds


def main() -> None:
    tighten_sensor_loop()
    from dagster._daemon.cli import main as dagster_daemon_main

    dagster_daemon_main()


if __name__ == "__main__":
    main()
