"""Without a PostgreSQL server, the test session starts its own instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dev.process_group import free_port

REPO = Path(__file__).resolve().parents[1]


def test_a_machine_without_postgres_runs_the_postgres_tests_on_a_private_server():
    # As on a developer's machine: neither a configured server nor CI's REQUIRE_POSTGRES.
    env = {
        k: v for k, v in os.environ.items() if k not in ("TEST_POSTGRES_URL", "REQUIRE_POSTGRES")
    }
    # Nothing listens on this port: as on a machine without a PostgreSQL server.
    env.update(TEST_POSTGRES_PROBE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "tests/test_job_transitions.py::test_only_one_of_two_runs_claims_a_pending_job[postgres]",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The PostgreSQL case ran (on the only server there is, the private one): not skipped.
    assert "1 passed" in result.stdout and "skipped" not in result.stdout
