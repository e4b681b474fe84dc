"""`make demo`'s script run headless, as a new user runs it, on free ports."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from dev import process_group
from dev.demo_data import LARGE_CAMPAIGN_ID
from voicesurvey_exports.export_file.csv_format import CSV_COLUMNS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CURL = re.compile(r'curl -o export\.csv "([^"]+)"')
HTTP_CURL = re.compile(r'curl -X POST -H "Authorization: Bearer ([^"]+)"')
WAITING = re.compile(r"^  running \d+%$")
SHA256 = re.compile(r"^  sha256: +[0-9a-f]{64} \(\d+ bytes")


class Demo:
    def __init__(
        self, home: Path, ui_port: int, s3_port: int, api_port: int, ignore_sigint: bool = False
    ):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DATABASE_URL", "AUTH_"))
        }
        env.update(
            DEMO_HOME=str(home),
            DEMO_UI_PORT=str(ui_port),
            DEMO_S3_PORT=str(s3_port),
            DEMO_API_PORT=str(api_port),
        )
        command = [sys.executable, "scripts/demo.py"]
        if ignore_sigint:  # as a shell without job control starts `make demo &`
            command = ["sh", "-c", 'trap "" INT && exec "$@"', "sh", *command]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.home = home
        self.groups: list[int] = []
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def read_groups(self) -> list[int]:
        """The process groups the demo started, from its pid file (while it runs)."""
        self.groups = json.loads((self.home / "demo.pids").read_text())
        return self.groups

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, pattern: re.Pattern, timeout: float = 300) -> re.Match:
        def next_match():
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                return None
            self.output.append(line)
            return pattern.search(line)

        try:
            return process_group.wait_for(next_match, timeout, pattern.pattern, interval=0)
        except TimeoutError:
            raise AssertionError("demo output so far:\n" + "".join(self.output)) from None


@pytest.fixture
def start_demo(tmp_path):
    """Starts demos in tmp_path; kills what they leave running if the test fails."""
    demos: list[Demo] = []

    def start(*ports: int, ignore_sigint: bool = False) -> Demo:
        demos.append(Demo(tmp_path, *ports, ignore_sigint=ignore_sigint))
        return demos[-1]

    yield start
    for demo in demos:
        if demo.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                demo.read_groups()
        demo.process.kill()
        demo.process.wait()
        for pgid in alive_groups(demo.groups):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def terminal_contacts(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute(
            "SELECT count(*) FROM contacts WHERE campaign_id = ? AND state IN "
            "('completed', 'refused', 'not_reached', 'excluded')",
            (LARGE_CAMPAIGN_ID.hex,),
        ).fetchone()[0]


def alive_groups(pgids) -> list[int]:
    return [pgid for pgid in pgids if process_group.group_members(pgid)]


def demo_processes(home: Path, ports: list[int], pgids: list[int]) -> dict[int, str]:
    """The live processes of a demo: in a group it started, or naming its home or ports."""
    numbers = "|".join(str(port) for port in ports)
    port_argument = re.compile(rf"(?:-p |--port |127\.0\.0\.1:)(?:{numbers})\b")
    found = dict(member for pgid in pgids for member in process_group.group_members(pgid))
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if state != "Z" and (f"{home}/" in command or port_argument.search(command)):
            found[int(proc.name)] = command[:300]
    return found


def stop_with_two_signals(demo: Demo, send, first: int, second: int) -> None:
    """Signal the demo as a process manager or an impatient user does: a second signal
    as soon as it is stopping. It must still stop everything and exit within 60 s."""
    send(first)
    demo.wait_for_line(re.compile("stopping the demo"), timeout=10)
    send(second)
    assert demo.process.wait(timeout=60) == 0
    demo.wait_for_line(re.compile("still stopping"), timeout=10)  # it got the second one


def test_demo_serves_a_download_restarts_after_a_crash_and_leaves_nothing(tmp_path, start_demo):
    ports = [process_group.free_port() for _ in range(3)]
    ui_port, s3_port, api_port = ports
    first = start_demo(*ports)
    url = first.wait_for_line(CURL).group(1)
    bearer = first.wait_for_line(HTTP_CURL).group(1)
    first_groups = first.read_groups()
    # While it waited, the job's status and progress as they changed; then the checksum.
    percents = [int(line.split()[1][:-1]) for line in first.output if WAITING.match(line)]
    assert percents == sorted(percents), first.output
    assert any(SHA256.search(line) for line in first.output), first.output

    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) - 1 == terminal_contacts(tmp_path / "app.db") > 10_000
    assert any(cell.startswith("'=") for row in rows for cell in row)  # the injection guard
    assert any("\n" in cell for row in rows for cell in row)
    # The printed HTTP command works too.
    created = requests.post(
        f"http://127.0.0.1:{api_port}/api/campaigns/{LARGE_CAMPAIGN_ID}/export",
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )
    assert created.status_code == 202 and created.json()["status"] == "pending"

    # An unclean stop leaves the services running; the next start must clear them.
    first.process.kill()
    first.process.wait()
    assert alive_groups(first_groups)
    second = start_demo(*ports)
    second.wait_for_line(CURL)
    assert any("demo data reused" in line for line in second.output)
    with sqlite3.connect(tmp_path / "app.db") as conn:
        assert conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 4
    assert not alive_groups(first_groups)
    second_groups = second.read_groups()

    # A process manager stops the demo: SIGTERM to its process group, twice.
    stop_with_two_signals(
        second, lambda signum: os.killpg(second.process.pid, signum), signal.SIGTERM, signal.SIGTERM
    )
    assert not demo_processes(tmp_path, ports, first_groups + second_groups)
    assert not any(process_group.port_open(port) for port in ports)


def test_demo_in_the_background_stops_on_two_quick_ctrl_c_and_leaves_nothing(tmp_path, start_demo):
    ports = [process_group.free_port() for _ in range(3)]
    demo = start_demo(*ports, ignore_sigint=True)
    demo.wait_for_line(CURL)
    groups = demo.read_groups()
    # Without the groups, the search by home and ports finds the UI, daemon and code servers.
    found = " ".join(demo_processes(tmp_path, ports, []).values())
    assert all(name in found for name in ("dagster_webserver", "dagster._daemon", "api grpc"))

    stop_with_two_signals(demo, demo.process.send_signal, signal.SIGINT, signal.SIGINT)
    assert not demo_processes(tmp_path, ports, groups)
    assert not any(process_group.port_open(port) for port in ports)
