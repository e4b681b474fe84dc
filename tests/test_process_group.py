"""stop_all ends everything the started processes left, and nothing else."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from dev import process_group

# Ignores SIGTERM, starts a child in its own session (out of the group) that ignores it
# too and one in the group, writes the escaped child's pid, then sleeps.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
escaped = subprocess.Popen([sys.executable, "-c", ignore_term], start_new_session=True)
subprocess.Popen(["sleep", "300"])
open(sys.argv[1], "w").write(str(escaped.pid))
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# SIGTERM's default action, whatever the test process left to its children: an ignored
# or blocked signal is inherited across exec, and some libraries block it in threads.
TERMINABLE = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
open(sys.argv[1], "w").close()
time.sleep(300)
"""


def test_stop_all_stops_a_process_that_exits_on_sigterm(tmp_path):
    ready = tmp_path / "ready"
    command = [sys.executable, "-c", TERMINABLE, str(ready)]
    sleeper = process_group.start(command, tmp_path / "sleeper.log", None)
    process_group.wait_for(ready.exists, 30, "the sleeper to reset SIGTERM", interval=0.05)
    process_group.stop_all([sleeper])
    assert sleeper.returncode == -signal.SIGTERM


def test_stop_all_kills_what_ignores_sigterm_and_what_left_the_group_only(tmp_path):
    stubborn = process_group.start(
        [sys.executable, "-c", STUBBORN, str(tmp_path / "escaped.pid")],
        tmp_path / "stubborn.log",
        None,
    )
    bystander = subprocess.Popen(["sleep", "300"])  # not started by stubborn
    try:
        escaped = int(
            process_group.wait_for(
                lambda: (
                    (tmp_path / "escaped.pid").exists() and (tmp_path / "escaped.pid").read_text()
                ),
                30,
                "the stubborn process's children",
                interval=0.1,
            )
        )
        assert len(process_group.group_members(stubborn.pid)) == 2
        assert alive(escaped)

        process_group.stop_all([stubborn], grace_seconds=1)

        assert stubborn.returncode == -signal.SIGKILL
        assert not process_group.group_members(stubborn.pid)
        assert not alive(escaped)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
