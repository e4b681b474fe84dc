"""Start local services in their own process group and stop the whole group.

Used by `make demo`, the end-to-end tests and the benchmarks. Dagster's dev processes do not exit
promptly on SIGTERM and leave children behind, so stopping asks, waits, then kills
the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def start(command: list[str], log_path: Path, env, cwd: Path | None = None) -> subprocess.Popen:
    """Start in a new session, so that the process and all its children form one group."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def stop_all(processes: list[subprocess.Popen], grace_seconds: float = 10) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Children (code servers, run workers) can outlive the leader: sweep the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in a process group (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in field 2 may hold spaces: split after its closing ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                members.append((int(stat.parent.name), cmdline.decode(errors="replace")))
        except (OSError, IndexError, ValueError):
            continue
    return members


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    """Poll until condition() is truthy and return its value, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
