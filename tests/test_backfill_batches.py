"""Backfill runs of several campaigns: each campaign succeeds or fails on its own."""

import uuid

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from voicesurvey_exports.pipeline.assets import ASSET_KEY, campaign_export
from voicesurvey_exports.pipeline.partitions import campaigns_partitions
from voicesurvey_exports.pipeline.recovery import batch_job_id
from voicesurvey_exports.pipeline.resources import ExportDestination
from voicesurvey_exports.pipeline.sensors import export_run_failure_sensor

from .conftest import TEST_BUCKET
from .dagster_harness import (
    execute_reconstructable,
    export_resources,
    run_status_sensor_resources,
)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def backfill_run(instance, database_url, campaigns, resources=None) -> dg.ExecuteInProcessResult:
    """One run over a range of campaign partitions, as a backfill launches it."""
    keys = [str(c) for c in campaigns]
    instance.add_dynamic_partitions(campaigns_partitions.name, keys)
    return dg.materialize(
        [campaign_export],
        instance=instance,
        resources=resources or export_resources(database_url),
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
        raise_on_error=False,
    )


def jobs_of(app_data, run: dg.DagsterRun, campaigns) -> list[dict]:
    return [app_data.job_row(batch_job_id(run, c)) for c in campaigns]


def objects_in_bucket(s3_client) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])
    return [item["Key"] for item in listing]


def test_one_run_exports_every_campaign_of_its_range(instance, database_url, app_data, s3_client):
    campaigns = [app_data.campaign(f"Batch {i}") for i in range(3)]
    for i, campaign in enumerate(campaigns):
        for _ in range(i + 1):
            app_data.contact(campaign, "completed")

    result = backfill_run(instance, database_url, campaigns)

    assert result.success
    jobs = jobs_of(app_data, result.dagster_run, campaigns)
    assert [(j["status"], j["total_records"]) for j in jobs] == [
        ("completed", 1),
        ("completed", 2),
        ("completed", 3),
    ]
    assert all(j["download_url"] and j["dagster_run_id"] == result.run_id for j in jobs)
    assert sorted(objects_in_bucket(s3_client)) == sorted(j["s3_key"] for j in jobs)
    assert instance.get_materialized_partitions(ASSET_KEY) == {str(c) for c in campaigns}


class S3RefusingOneCampaign(S3Resource):
    """The real client; the service refuses every upload of one campaign's object."""

    refused_campaign: str

    def get_client(self):
        client = super().get_client()

        def refuse(params, **_):
            if self.refused_campaign in params.get("Key", ""):
                raise ConnectionError(f"connection reset uploading {params['Key']}")

        for operation in ("PutObject", "CreateMultipartUpload"):
            client.meta.events.register(f"before-parameter-build.s3.{operation}", refuse)
        return client


class DestinationRefusingOneCampaign(ExportDestination):
    refused_campaign: str

    def s3_resource(self) -> S3Resource:
        return S3RefusingOneCampaign(
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            refused_campaign=self.refused_campaign,
        )


def test_a_failing_campaign_fails_only_its_own_job_and_partition(
    instance, database_url, app_data, s3_client
):
    campaigns = [app_data.campaign(f"Batch {i}") for i in range(3)]
    for campaign in campaigns:
        app_data.contact(campaign, "completed")
    bad = campaigns[1]
    resources = export_resources(database_url)
    destination = resources["destination"]
    resources["destination"] = DestinationRefusingOneCampaign(
        **{field: getattr(destination, field) for field in ExportDestination.model_fields},
        refused_campaign=str(bad),
    )

    result = backfill_run(instance, database_url, campaigns, resources)

    # The run fails, naming the campaign; the failed job says why, the others complete.
    assert not result.success
    failure = result.get_run_failure_event()
    run_failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert str(bad) in run_failure.step_failure_data.user_failure_data.description
    assert failure is not None
    good_jobs = [
        app_data.job_row(batch_job_id(result.dagster_run, c)) for c in (campaigns[0], campaigns[2])
    ]
    assert [j["status"] for j in good_jobs] == ["completed", "completed"]
    bad_job = app_data.job_row(batch_job_id(result.dagster_run, bad))
    assert bad_job["status"] == "failed" and bad_job["download_url"] is None
    assert bad_job["error_message"].startswith(f"upload to s3://{TEST_BUCKET}/exports/{bad}/")
    assert "failed after 3 attempts" in bad_job["error_message"]
    # Only the good campaigns have files and show as materialised in Dagster.
    assert sorted(objects_in_bucket(s3_client)) == sorted(j["s3_key"] for j in good_jobs)
    assert instance.get_materialized_partitions(ASSET_KEY) == {
        str(campaigns[0]),
        str(campaigns[2]),
    }


def test_a_killed_backfill_run_fails_the_jobs_it_held(instance, database_url, app_data, s3_client):
    # A run worker killed mid-batch: its jobs are running under it, the run has no job tag.
    run = instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.FAILURE,
        )
    )
    campaigns = [app_data.campaign(f"Killed {i}") for i in range(2)]
    held = [
        app_data.export_job(c, None, status="running", dagster_run_id=run.run_id) for c in campaigns
    ]
    finished = app_data.export_job(
        campaigns[0], None, status="completed", dagster_run_id=run.run_id
    )
    others = app_data.export_job(campaigns[1], None, status="running", dagster_run_id="another-run")

    with dg.build_run_status_sensor_context(
        sensor_name="export_run_failure_sensor",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=dg.DagsterEvent(
            event_type_value="PIPELINE_FAILURE",
            job_name=run.job_name,
            message="run worker exited unexpectedly",
        ),
        resources=run_status_sensor_resources(database_url),
    ) as context:
        export_run_failure_sensor(context.for_run_failure())

    for job_id in held:
        row = app_data.job_row(job_id)
        assert row["status"] == "failed"
        assert "run worker exited unexpectedly" in row["error_message"]
    assert app_data.job_row(finished)["status"] == "completed"
    assert app_data.job_row(others)["status"] == "running"


def batch_job_for_tests(database_url: str, refused_campaign: str) -> dg.JobDefinition:
    """campaign_export_job whose S3 refuses one campaign's uploads (none if empty); a
    module-level function, as a run worker rebuilds a reconstructable job."""
    from voicesurvey_exports.pipeline.assets import campaign_export_job

    resources = export_resources(database_url)
    if refused_campaign:
        destination = resources["destination"]
        resources["destination"] = DestinationRefusingOneCampaign(
            **{field: getattr(destination, field) for field in ExportDestination.model_fields},
            refused_campaign=refused_campaign,
        )
    defs = dg.Definitions(
        assets=[campaign_export],
        jobs=[campaign_export_job],
        resources=resources,
        executor=dg.in_process_executor,
    )
    return defs.resolve_job_def(campaign_export_job.name)


@pytest.mark.postgres
def test_reexecuting_a_partly_failed_backfill_run_completes_the_campaigns_that_failed(
    instance, postgres_url, s3_client
):
    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    campaigns = [app_data.campaign(f"Rerun {i}") for i in range(3)]
    for campaign in campaigns:
        app_data.contact(campaign, "completed")
    keys = [str(c) for c in campaigns]
    instance.add_dynamic_partitions(campaigns_partitions.name, keys)
    bad = keys[1]

    def run(refused: str, **options) -> dg.ExecuteInProcessResult:
        return execute_reconstructable(
            instance,
            __name__,
            batch_job_for_tests.__name__,
            {"database_url": postgres_url, "refused_campaign": refused},
            **options,
        )

    range_tags = {
        "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[-1],
    }
    first = run(bad, tags=range_tags)
    assert not first.success
    assert app_data.job_row(batch_job_id(first.dagster_run, campaigns[1]))["status"] == "failed"

    # S3 accepts the campaign again; "re-execute from failure", as the UI offers it (the
    # UI's re-execution keeps the parent's tags, the partition range among them).
    second = run(
        "",
        tags=range_tags,
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
    )

    assert second.success
    jobs = jobs_of(app_data, first.dagster_run, campaigns)  # the same job rows
    assert [j["status"] for j in jobs] == ["completed"] * 3
    assert jobs[1]["dagster_run_id"] == second.run_id and jobs[1]["download_url"]
    assert sorted(objects_in_bucket(s3_client)) == sorted(j["s3_key"] for j in jobs)
    assert instance.get_materialized_partitions(ASSET_KEY) == set(keys)


def test_a_retried_first_step_keeps_one_job_row_for_a_ui_run(
    instance, database_url, app_data, s3_client, monkeypatch
):
    """A UI materialisation has no job id tag: its first attempt inserts the row and tags
    the run; the op's retry must take that row, not insert a second one."""
    from voicesurvey_exports.pipeline import export_steps

    campaign = app_data.campaign("Retried")
    app_data.contact(campaign, "completed")
    calls = []
    real_copy = export_steps.copy_terminal_contacts

    def copy_failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("server closed the connection unexpectedly")
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(export_steps, "copy_terminal_contacts", copy_failing_once)
    instance.add_dynamic_partitions(campaigns_partitions.name, [str(campaign)])
    result = dg.materialize(
        [campaign_export],
        partition_key=str(campaign),
        instance=instance,
        resources=export_resources(database_url),
        raise_on_error=False,
    )

    assert result.success and len(calls) == 2
    from sqlalchemy import select

    from voicesurvey_exports.app_db.schema import export_jobs

    with app_data.engine.connect() as conn:
        statuses = conn.execute(
            select(export_jobs.c.status).where(export_jobs.c.campaign_id == campaign)
        ).scalars()
        assert list(statuses) == ["completed"]
