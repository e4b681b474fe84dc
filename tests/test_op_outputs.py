"""EXPORT_IO_STORAGE: where ops keep the small outputs that retries and re-execution load.

With "s3" a re-execution in another container (no disk shared with the failed run: not
its local_artifact_storage, not its spool) completes the same export job; "local" stays
the single-machine default.
"""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.pipeline.assets import campaign_export, campaign_export_job
from voicesurvey_exports.pipeline.resources import build_resources
from voicesurvey_exports.settings import OP_OUTPUTS_S3_PREFIX, SettingsError

from .conftest import TEST_BUCKET, AppData, settings_for
from .dagster_harness import execute_reconstructable
from .test_reexecution import (
    campaign_with_contacts,
    executed_steps,
    links_refused,
    stored_rows,
)

pytestmark = pytest.mark.postgres


def export_job_with_io_storage(
    database_url: str, io_storage: str, spool_dir: str
) -> dg.JobDefinition:
    """campaign_export_job with EXPORT_IO_STORAGE set (module level: reconstructable)."""
    settings = settings_for(database_url, EXPORT_IO_STORAGE=io_storage, EXPORT_SPOOL_DIR=spool_dir)
    defs = dg.Definitions(
        assets=[campaign_export],
        jobs=[campaign_export_job],
        resources=build_resources(settings),
        executor=dg.in_process_executor,
    )
    return defs.resolve_job_def(campaign_export_job.name)


def test_an_unknown_io_storage_is_refused_in_one_line():
    with pytest.raises(SettingsError) as error:
        settings_for("sqlite://", EXPORT_IO_STORAGE="nfs")
    assert str(error.value) == "EXPORT_IO_STORAGE='nfs' must be one of: local, s3"
    assert settings_for("sqlite://").io_storage == "local"


def test_reexecution_on_another_machine_loads_the_outputs_from_s3_and_completes_the_job(
    postgres_url, s3_client, tmp_path
):
    app = AppData(get_engine(postgres_url))
    campaign, job_id = campaign_with_contacts(app, 12)
    first_disk, second_disk = tmp_path / "first", tmp_path / "second"
    first_disk.mkdir()
    second_disk.mkdir()

    def run(spool_dir, **options):
        return execute_reconstructable(
            instance,
            __name__,
            export_job_with_io_storage.__name__,
            {"database_url": postgres_url, "io_storage": "s3", "spool_dir": str(spool_dir)},
            **options,
        )

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [str(campaign)])
        # The database refuses the completion: the run fails at its last op, after the
        # extract, render and upload steps stored their outputs.
        with links_refused(app.engine):
            failed = run(
                first_disk,
                tags={"dagster/partition": str(campaign), "export_job_id": str(job_id)},
            )
        assert not failed.success
        stored = s3_client.list_objects_v2(Bucket=TEST_BUCKET, Prefix=OP_OUTPUTS_S3_PREFIX)
        assert any(failed.run_id in item["Key"] for item in stored.get("Contents", []))

        # Another container: none of the failed run's local files are there.
        shutil.rmtree(instance.storage_directory(), ignore_errors=True)
        shutil.rmtree(first_disk)
        retried = run(
            second_disk,
            reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, instance),
        )

        assert retried.success
        assert executed_steps(instance, retried.run_id) == {"record_export"}
    job = app.job_row(job_id)
    assert (job["status"], job["total_records"], job["dagster_run_id"]) == (
        "completed",
        12,
        retried.run_id,
    )
    assert len(stored_rows(s3_client, job["s3_key"])) == 12
