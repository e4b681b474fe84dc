"""`make demo`'s script run headless, as a new user runs it, on free ports."""

from __future__ import annotations

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


class Demo:
    def __init__(self, home: Path, ui_port: int, s3_port: int, api_port: int):
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
        self.process = subprocess.Popen(
            [sys.executable, "scripts/demo.py"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

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


def terminal_contacts(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute(
            "SELECT count(*) FROM contacts WHERE campaign_id = ? AND state IN "
            "('completed', 'refused', 'not_reached', 'excluded')",
            (LARGE_CAMPAIGN_ID.hex,),
        ).fetchone()[0]


def alive_groups(pgids) -> list[int]:
    return [pgid for pgid in pgids if process_group.group_members(pgid)]


def test_demo_serves_a_download_restarts_after_a_crash_and_leaves_nothing(tmp_path):
    ports = [process_group.free_port() for _ in range(3)]
    ui_port, s3_port, api_port = ports
    first = Demo(tmp_path, *ports)
    url = first.wait_for_line(CURL).group(1)
    bearer = first.wait_for_line(HTTP_CURL).group(1)
    first_groups = json.loads((tmp_path / "demo.pids").read_text())

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
    second = Demo(tmp_path, *ports)
    second.wait_for_line(CURL)
    assert any("demo data reused" in line for line in second.output)
    with sqlite3.connect(tmp_path / "app.db") as conn:
        assert conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 4
    assert not alive_groups(first_groups)
    second_groups = json.loads((tmp_path / "demo.pids").read_text())

    second.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert second.process.wait(timeout=60) == 0
    assert not alive_groups(first_groups + second_groups)
    assert not any(process_group.port_open(port) for port in ports)
