"""The fast path's compute log manager (deploy/dagster-single-node.yaml): a run's stdout
and stderr (Dagster's own log lines included) reach the files the UI reads, in Dagster's
default folder."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import yaml

from voicesurvey_exports.single_node.compute_logs import FileComputeLogManager

SINGLE_NODE_YAML = Path(__file__).parents[1] / "deploy" / "dagster-single-node.yaml"


@dg.op
def talk(context):
    print("printed to stdout", flush=True)
    print("printed to stderr", file=sys.stderr, flush=True)
    context.log.info("logged through Dagster")


@dg.job
def talking_job():
    talk()


def test_a_runs_output_is_captured_where_the_ui_reads_it(tmp_path, capfd):
    compute_logs = yaml.safe_load(SINGLE_NODE_YAML.read_text())["compute_logs"]
    with dg.instance_for_test(
        overrides={"compute_logs": compute_logs}, temp_dir=str(tmp_path)
    ) as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, FileComputeLogManager)
        result = talking_job.execute_in_process(instance=instance)
        assert result.success
        [captured] = [
            event.event_specific_data
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.LOGS_CAPTURED
        ]
        log_key = manager.build_log_key_for_run(result.run_id, captured.file_key)
        assert manager.is_capture_complete(log_key)
        logs = manager.get_log_data(log_key)

    assert b"printed to stdout" in logs.stdout
    assert b"printed to stderr" in logs.stderr
    assert b"logged through Dagster" in logs.stderr
    # Dagster's default folder for them: the instance's storage folder.
    stored = [path.read_bytes() for path in (tmp_path / "storage").rglob("*.out")]
    assert any(b"printed to stdout" in body for body in stored)
    # Not copied to the process's own streams as well.
    assert "printed to stdout" not in capfd.readouterr().out
