"""The daemon and the run workers keep their instance-database connections open
(single_node/instance_connections.py): a run's ~50 event writes and the daemon's ticks do
not each open a PostgreSQL connection (and fork a server backend) as dagster-postgres
does by default."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterInstance
from sqlalchemy import text

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.single_node import daemon
from voicesurvey_exports.single_node.instance_connections import keep_instance_connections

pytestmark = pytest.mark.postgres
STORAGE_CALLS = 30


def sessions_opened(server_url: str, database_url: str) -> int:
    """Connections ever opened to the database (PostgreSQL's own count, pg_stat_database)."""
    name = database_url.rsplit("/", 1)[1]
    time.sleep(1.2)  # backends flush their statistics at most once a second
    with get_engine(f"{server_url}/postgres").connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return conn.execute(
            text("SELECT sessions FROM pg_stat_database WHERE datname = :name"), {"name": name}
        ).scalar_one()


def storage_calls(instance: DagsterInstance) -> None:
    """What the daemon and a run worker do all the time: read runs and sensor states,
    write to the event log."""
    for number in range(STORAGE_CALLS):
        instance.get_runs_count()
        instance.all_instigator_state()
        instance.add_dynamic_partitions("campaigns", [f"campaign-{number}"])


@pytest.fixture
def instance_database(create_postgres_database, postgres_server, tmp_path):
    url = create_postgres_database("instance_pool")
    (tmp_path / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {url}\n")
    return postgres_server, url, tmp_path


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "dagster-default"])
def test_storage_calls_reuse_kept_connections(instance_database, kept):
    server, url, home = instance_database
    with DagsterInstance.from_config(str(home)) as instance:
        if kept:
            keep_instance_connections(instance)
        before = sessions_opened(server, url)
        storage_calls(instance)
        opened = sessions_opened(server, url) - before
    if kept:
        assert opened <= 3, opened  # at most one per storage (runs, events, schedules)
    else:
        # The default this replaces: a connection for every call (the test can fail).
        assert opened >= 2 * STORAGE_CALLS, opened


def test_the_daemon_entry_point_hands_dagster_an_instance_that_keeps_connections(
    instance_database, monkeypatch
):
    from dagster._daemon import cli

    server, url, home = instance_database
    seen = []
    monkeypatch.setattr(cli, "_daemon_run_command", lambda instance, *_args: seen.append(instance))
    daemon.prepare_daemon_instance()
    with DagsterInstance.from_config(str(home)) as instance:
        cli._daemon_run_command(instance, "INFO", "INFO", "colored", None)
        assert seen == [instance]
        before = sessions_opened(server, url)
        storage_calls(instance)
        assert sessions_opened(server, url) - before <= 3


def test_the_daemon_entry_point_refuses_a_dagster_without_its_hook(monkeypatch):
    from dagster._daemon import cli

    monkeypatch.delattr(cli, "_daemon_run_command")
    with pytest.raises(RuntimeError, match="_daemon_run_command is gone"):
        daemon.prepare_daemon_instance()
