"""Start local services in their own process group and stop everything they started.

Used by `make demo`, the end-to-end tests and the benchmarks. Dagster's dev processes
do not exit promptly on SIGTERM and leave children behind, so stopping asks, waits,
then kills, and returns only once no process of the started ones is left.
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
from typing import NamedTuple


def start(command: list[str], log_path: Path, env, cwd: Path | None = None) -> subprocess.Popen:
    """Start in a new session, so that the process and all its children form one group."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def stop_all(processes: list[subprocess.Popen], grace_seconds: float = 10) -> None:
    """Stop processes from start() and everything they started: SIGTERM, up to
    grace_seconds to exit, then SIGKILL; return once none is left.

    "Everything they started" is the process group and session of each (start() makes
    the process their leader) and any descendant that left them for a session of its
    own. Each process is signalled once per phase, including those that appear only
    later: one forked meanwhile, or a child that had not yet left the caller's session
    when stop_all began. Raises RuntimeError if a process outlives SIGKILL by 10 s.
    """
    leaders = {process.pid for process in processes}
    seen: dict[int, int] = {}  # pid -> start time of every process found in the tree
    for signum, seconds in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10)):
        signalled: set[int] = set()
        deadline = time.monotonic() + seconds
        while True:
            for process in processes:
                process.poll()  # reap the leaders that exited
            left = _tree(leaders, seen)
            if not left:
                for process in processes:
                    process.wait()  # all are dead: returns at once
                return
            _send(signum, set(left) - signalled)
            signalled.update(left)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    raise RuntimeError(f"processes left after SIGKILL: {sorted(left)}")


class _Process(NamedTuple):
    ppid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks after boot: with the pid, names one process


def _processes() -> dict[int, _Process]:
    """Every live process but zombies (Linux /proc)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in field 2 may hold spaces: split after its closing ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                ppid, pgid, sid = (int(field) for field in fields[1:4])
                table[int(stat.parent.name)] = _Process(ppid, pgid, sid, int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def _tree(leaders: set[int], seen: dict[int, int]) -> dict[int, _Process]:
    """The live processes of the leaders' groups and sessions, those seen in an earlier
    call, and their descendants; adds them all to seen."""
    table = _processes()
    tree = {
        pid: process
        for pid, process in table.items()
        if process.pgid in leaders
        or process.sid in leaders
        or seen.get(pid) == process.start_time  # the same process, not a reused pid
    }
    grown = True
    while grown:
        children = {
            pid: process
            for pid, process in table.items()
            if process.ppid in tree and pid not in tree
        }
        tree.update(children)
        grown = bool(children)
    seen.update((pid, process.start_time) for pid, process in tree.items())
    return tree


def _send(signum: int, pids: set[int]) -> None:
    for pid in pids:
        # Gone meanwhile, or changed to a user we may not signal: nothing to do here.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in a process group (Linux /proc)."""
    members = []
    for pid, process in _processes().items():
        if process.pgid == pgid:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                members.append((pid, cmdline.decode(errors="replace")))
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
