"""`dagster dev` and `dg dev` from a fresh clone, with no DAGSTER_HOME and only a SQLite
DATABASE_URL, serve the UI with campaign_export loaded. Dagster's tools read a
dagster.yaml in the folder they start in: the production instance files live in
deploy/, so the tools get Dagster's defaults (a throwaway SQLite instance) instead of
asking for DAGSTER_POSTGRES_URL."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from dev import local_services
from dev import process_group as processes

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What a clone does not have: the environment, caches, local state.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".local",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".tmp_dagster_home_*",
    "dagster_home",
    "storage",
    "logs",
    "history",
)
ASSET_KEYS = "{ assetNodes { assetKey { path } } }"


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=NOT_IN_A_CLONE)
    return clone


def asset_keys(graphql_url: str) -> set[str]:
    try:
        nodes = local_services.graphql(graphql_url, ASSET_KEYS)["data"]["assetNodes"]
    except Exception:  # not answering yet, or the code location still loading
        return set()
    return {"/".join(node["assetKey"]["path"]) for node in nodes or []}


@pytest.mark.parametrize("command", [["dagster", "dev"], ["dg", "dev"]], ids=["dagster", "dg"])
def test_dev_server_from_a_fresh_clone_serves_campaign_export(command, fresh_clone, tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("DAGSTER_") and name != "DATABASE_URL"
    }
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'app.db'}"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as an activated virtualenv
    port = processes.free_port()
    log = tmp_path / "dev.log"
    server = processes.start(
        [str(BIN / command[0]), *command[1:], "-h", "127.0.0.1", "-p", str(port)],
        log,
        env,
        cwd=fresh_clone,
    )
    try:
        url = f"http://127.0.0.1:{port}/graphql"

        def loaded():
            if server.poll() is not None:
                raise AssertionError(f"{command} exited:\n{log.read_text()[-3000:]}")
            return "campaign_export" in asset_keys(url)

        processes.wait_for(loaded, 180, f"{' '.join(command)} to serve campaign_export", 1)
    finally:
        # They do not exit promptly on SIGTERM: stop the whole group (new session).
        processes.stop_all([server])
    assert "DAGSTER_POSTGRES_URL" not in log.read_text()
