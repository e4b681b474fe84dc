"""Running the export asset in tests with the same definitions and our own resources."""

from __future__ import annotations

import uuid

import dagster as dg

from voicesurvey_exports.pipeline.assets import (
    EXPORT_JOB_TAG,
    REQUESTS_SENSOR,
    SENSOR_NAME_TAG,
    campaign_export,
)
from voicesurvey_exports.pipeline.partitions import campaigns_partitions
from voicesurvey_exports.pipeline.resources import build_resources

from .conftest import TEST_BUCKET, settings_for


def export_resources(
    database_url: str,
    bucket: str = TEST_BUCKET,
    ttl: int = 3600,
    spool_dir: str | None = None,
    kms_key_id: str | None = None,
) -> dict:
    """The pipeline's resources, built as the definitions build them, for the test bucket."""
    variables = {"S3_BUCKET_NAME": bucket, "EXPORT_URL_EXPIRATION_SECONDS": str(ttl)}
    if spool_dir:
        variables["EXPORT_SPOOL_DIR"] = spool_dir
    if kms_key_id:
        variables["S3_SSE_KMS_KEY_ID"] = kms_key_id
    return build_resources(settings_for(database_url, **variables))


def materialize_export(
    instance: dg.DagsterInstance,
    database_url: str,
    campaign_id: uuid.UUID | str,
    export_job_id: uuid.UUID | None = None,
    launched_by_sensor: bool = True,
    resources: dict | None = None,
    **resource_options,
) -> dg.ExecuteInProcessResult:
    """Materialise one campaign partition, as the request sensor does (with a job tag, and
    the sensor's name as Dagster tags its runs) or the UI (without)."""
    instance.add_dynamic_partitions(campaigns_partitions.name, [str(campaign_id)])
    tags = None
    if export_job_id:
        tags = {EXPORT_JOB_TAG: str(export_job_id)}
        if launched_by_sensor:
            tags[SENSOR_NAME_TAG] = REQUESTS_SENSOR
    return dg.materialize(
        [campaign_export],
        partition_key=str(campaign_id),
        instance=instance,
        resources=resources or export_resources(database_url, **resource_options),
        tags=tags,
        raise_on_error=False,
    )


def execute_reconstructable(
    instance: dg.DagsterInstance, module: str, function: str, kwargs: dict, **options
) -> dg.ExecuteInProcessResult:
    """Run the job a module-level function builds, the way a run worker rebuilds it, so
    that a re-execution (``reexecution_options``) loads its parent's outputs as the
    daemon's retries and the UI's "re-execute from failure" do."""
    with dg.execute_job(
        dg.build_reconstructable_job(module, function, reconstructable_kwargs=kwargs),
        instance,
        raise_on_error=False,
        **options,
    ) as result:
        return result


def run_status_sensor_resources(database_url: str, bucket: str = TEST_BUCKET) -> dict:
    """What the failure and cancellation sensors need: the job rows and the bucket."""
    resources = export_resources(database_url, bucket=bucket)
    return {key: resources[key] for key in ("app_db", "destination")}


def run_failure_sensor(
    instance, result: dg.ExecuteInProcessResult, database_url: str, bucket: str = TEST_BUCKET
) -> None:
    """Evaluate export_run_failure_sensor on a failed run, as the daemon would."""
    from voicesurvey_exports.pipeline.sensors import export_run_failure_sensor

    # A context manager: the destination resource holds the S3 resource, which Dagster
    # sets up and tears down around the evaluation.
    with dg.build_run_status_sensor_context(
        sensor_name="export_run_failure_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources=run_status_sensor_resources(database_url, bucket),
    ) as context:
        export_run_failure_sensor(context.for_run_failure())
