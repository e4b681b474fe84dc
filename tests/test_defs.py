"""The definitions load, and run, with Dagster's deprecation warnings as errors."""

import importlib
import os
import subprocess
import sys
import warnings

import dagster as dg
import pytest

from voicesurvey_exports.pipeline.assets import CAMPAIGNS_PER_BACKFILL_RUN, campaign_export

from .dagster_harness import materialize_export

DAGSTER_WARNINGS = (DeprecationWarning, dg.SupersessionWarning, dg.BetaWarning, dg.PreviewWarning)


@pytest.fixture
def strict_warnings():
    with warnings.catch_warnings():
        for category in DAGSTER_WARNINGS:
            warnings.filterwarnings("error", category=category, module="dagster.*")
            warnings.filterwarnings("error", category=category, module="voicesurvey_exports.*")
        yield


def load_defs(monkeypatch, **env) -> dg.Definitions:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///unused.db")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import voicesurvey_exports.pipeline.definitions as module

    return importlib.reload(module).defs


def test_definitions_load_without_deprecated_calls(monkeypatch, strict_warnings):
    defs = load_defs(monkeypatch)
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert repository.has_job("campaign_export_job")
    assert {s.name for s in repository.sensor_defs} == {
        "export_requests_sensor",
        "export_schedules_sensor",
        "campaign_partitions_sensor",
        "export_run_failure_sensor",
        "export_run_canceled_sensor",
        "export_cancel_sensor",
        "stuck_export_requests_sensor",
    }
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in repository.sensor_defs)


def test_sensor_interval_and_batch_come_from_the_environment(monkeypatch):
    defs = load_defs(monkeypatch, EXPORT_SENSOR_INTERVAL_SECONDS="2")
    sensor = defs.get_repository_def().get_sensor_def("export_requests_sensor")
    assert sensor.minimum_interval_seconds == 2


def test_bad_settings_stop_the_code_location_from_loading(monkeypatch):
    with pytest.raises(ValueError, match="EXPORT_URL_EXPIRATION_SECONDS='999999999'"):
        load_defs(monkeypatch, EXPORT_URL_EXPIRATION_SECONDS="999999999")


def test_export_runs_without_deprecated_calls(strict_warnings, postgres_url, s3_client):
    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    data = AppData(get_engine(postgres_url))
    campaign = data.campaign()
    data.contact(campaign, "completed")
    with dg.instance_for_test() as instance:
        assert materialize_export(instance, postgres_url, campaign).success


def test_asset_declares_its_kinds_and_partitions():
    spec = next(iter(campaign_export.specs))
    assert spec.kinds == {"postgres", "pandas", "s3"}
    assert spec.partitions_def.name == "campaigns"


def test_backfills_export_several_campaigns_per_run():
    policy = campaign_export.backfill_policy
    assert policy.max_partitions_per_run == CAMPAIGNS_PER_BACKFILL_RUN > 1


@pytest.mark.parametrize("collecting", [True, False])
def test_loading_the_definitions_pauses_the_collector_and_leaves_it_as_it_found_it(collecting):
    # Each run worker imports the pipeline anew: the collector must not run meanwhile,
    # and must be back on afterwards, or a long-lived code server would never free a cycle.
    script = (
        "import gc\n"
        "import dagster\n"  # as a run worker has it before it loads the definitions
        "collections = []\n"
        "gc.callbacks.append(lambda phase, info: collections.append(phase))\n"
        f"gc.enable() if {collecting} else gc.disable()\n"
        "import voicesurvey_exports.pipeline.definitions as d\n"
        "assert d.defs.assets\n"
        "print(len(collections), gc.isenabled(), gc.get_freeze_count() > 100_000)\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DATABASE_URL": "sqlite:///unused.db"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # No collection while it loaded; what it made is left out of later scans (gc.freeze).
    assert shown == ["0", str(collecting), "True"]
