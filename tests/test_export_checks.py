"""The asset checks on every exported file: recorded per partition, and blocking: a
stored file that is not what was written fails its export job with the check's reason
and leaves no file (in a backfill run, that campaign's job only)."""

from __future__ import annotations

import gzip

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from voicesurvey_exports.export_file.csv_format import BOM, HEADER
from voicesurvey_exports.pipeline.assets import ASSET_KEY
from voicesurvey_exports.pipeline.export_checks import (
    GZIP_START_BYTES,
    HEADER_CHECK,
    ROWS,
    SIZE,
    evaluate,
    failure_reason,
    stored_start_bytes,
)
from voicesurvey_exports.pipeline.recovery import batch_job_id
from voicesurvey_exports.pipeline.resources import ExportDestination

from .conftest import TEST_BUCKET
from .dagster_harness import export_resources, materialize_export, run_failure_sensor
from .test_backfill_batches import backfill_run

TRUNCATED = b"campaign_id,contact_id\r\n"


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


class S3StoringTruncatedFiles(S3Resource):
    """The real client; the store keeps only the start of one campaign's uploads (a
    proxy or a storage fault that S3's own checksums would not see)."""

    truncated_campaign: str

    def get_client(self):
        client = super().get_client()

        def truncate(params, **_):
            if self.truncated_campaign in params.get("Key", ""):
                params["Body"] = TRUNCATED

        client.meta.events.register("before-parameter-build.s3.PutObject", truncate)
        return client


class DestinationStoringTruncatedFiles(ExportDestination):
    truncated_campaign: str

    def s3_resource(self) -> S3Resource:
        return S3StoringTruncatedFiles(
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            truncated_campaign=self.truncated_campaign,
        )


def truncating_resources(database_url, campaign) -> dict:
    resources = export_resources(database_url)
    destination = resources["destination"]
    resources["destination"] = DestinationStoringTruncatedFiles(
        **{field: getattr(destination, field) for field in ExportDestination.model_fields},
        truncated_campaign=str(campaign),
    )
    return resources


def check_records(instance, name: str) -> list:
    return instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(ASSET_KEY, name), limit=100
    )


def objects_in_bucket(s3_client) -> list[str]:
    return [
        item["Key"] for item in s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])
    ]


def test_every_export_passes_its_three_checks_recorded_on_its_partition(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    for state in ("completed", "refused", "excluded"):
        app_data.contact(campaign, state)
    job_id = app_data.export_job(campaign, app_data.user())

    result = materialize_export(instance, database_url, campaign, job_id)

    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {(e.check_name, e.passed, e.partition) for e in evaluations} == {
        (ROWS, True, str(campaign)),
        (HEADER_CHECK, True, str(campaign)),
        (SIZE, True, str(campaign)),
    }
    rows = next(e for e in evaluations if e.check_name == ROWS)
    assert {key: value.value for key, value in rows.metadata.items()} == {
        "file_rows": 3,
        "database_rows": 3,
    }
    for name in (ROWS, HEADER_CHECK, SIZE):
        (record,) = check_records(instance, name)
        assert (record.status.value, record.partition) == ("SUCCEEDED", str(campaign))


@pytest.mark.parametrize(
    "options",
    [{"bom": True}, {"compression": "gzip"}, {"bom": True, "compression": "gzip"}],
    ids=["bom", "gzip", "bom and gzip"],
)
def test_exports_with_options_pass_their_three_checks(
    instance, database_url, app_data, s3_client, options
):
    campaign = app_data.campaign()
    for state in ("completed", "refused", "excluded"):
        app_data.contact(campaign, state)
    job_id = app_data.export_job(campaign, app_data.user(), **options)

    result = materialize_export(instance, database_url, campaign, job_id)

    assert result.success
    assert {(e.check_name, e.passed) for e in result.get_asset_check_evaluations()} == {
        (ROWS, True),
        (HEADER_CHECK, True),
        (SIZE, True),
    }
    assert app_data.job_row(job_id)["status"] == "completed"


def test_a_gzip_export_whose_object_is_not_its_gzip_fails_the_header_check(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user(), compression="gzip")

    result = materialize_export(
        instance,
        database_url,
        campaign,
        job_id,
        resources=truncating_resources(database_url, campaign),  # stores plain CSV bytes
    )
    assert not result.success
    run_failure_sensor(instance, result, database_url)

    job = app_data.job_row(job_id)
    assert job["status"] == "failed" and job["download_url"] is None
    assert job["error_message"] == (
        f"check {HEADER_CHECK} failed: the stored file, gunzipped, does not start with the "
        "column contract's header"
    )
    assert objects_in_bucket(s3_client) == []


def test_a_failing_check_fails_the_job_with_its_reason_and_leaves_no_file(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())

    result = materialize_export(
        instance,
        database_url,
        campaign,
        job_id,
        resources=truncating_resources(database_url, campaign),
    )
    assert not result.success
    run_failure_sensor(instance, result, database_url)

    job = app_data.job_row(job_id)
    assert job["status"] == "failed" and job["download_url"] is None
    assert job["error_message"] == (
        f"check {HEADER_CHECK} failed: the stored file does not start with the column "
        "contract's header"
    )
    assert objects_in_bucket(s3_client) == []
    assert instance.get_materialized_partitions(ASSET_KEY) == set()
    (record,) = check_records(instance, HEADER_CHECK)
    assert (record.status.value, record.partition) == ("FAILED", str(campaign))


def test_a_failing_check_in_a_backfill_run_fails_only_its_campaign(
    instance, database_url, app_data, s3_client
):
    campaigns = [app_data.campaign(f"Checked {i}") for i in range(3)]
    for campaign in campaigns:
        app_data.contact(campaign, "completed")
    bad = campaigns[1]

    result = backfill_run(
        instance, database_url, campaigns, truncating_resources(database_url, bad)
    )

    assert not result.success  # the run names the campaign that failed
    jobs = {c: app_data.job_row(batch_job_id(result.dagster_run, c)) for c in campaigns}
    assert [jobs[c]["status"] for c in campaigns] == ["completed", "failed", "completed"]
    assert jobs[bad]["error_message"].startswith(f"check {HEADER_CHECK} failed")
    assert sorted(objects_in_bucket(s3_client)) == sorted(
        jobs[c]["s3_key"] for c in campaigns if c != bad
    )
    assert instance.get_materialized_partitions(ASSET_KEY) == {
        str(campaigns[0]),
        str(campaigns[2]),
    }
    statuses = {(r.partition, r.status.value) for r in check_records(instance, SIZE)}
    assert statuses == {
        (str(campaigns[0]), "SUCCEEDED"),
        (str(bad), "FAILED"),
        (str(campaigns[2]), "SUCCEEDED"),
    }


def test_a_failed_header_check_shows_no_byte_of_what_the_file_holds():
    row = b"00000000-0000-4000-8000-00000000c001,secret-contact,+390550001,completed\r\n"
    evaluations = evaluate(
        partition_key="p",
        database_rows=1,
        file_rows=1,
        written_bytes=len(HEADER) + len(row),
        stored_bytes=len(row),
        stored_start=row[: len(HEADER)],
        blocking=True,
    )
    shown = repr([(e.description, e.metadata) for e in evaluations])
    assert "secret-contact" not in shown and "+390550001" not in shown
    assert failure_reason(evaluations).startswith(f"check {HEADER_CHECK} failed")


@pytest.mark.parametrize(
    ("stored", "failed", "reason"),
    [
        (HEADER + b"x\r\n", [], None),
        (
            # A byte-order mark is not the contract's header (and 3 more bytes).
            b"\xef\xbb\xbf" + HEADER + b"x\r\n",
            [HEADER_CHECK, SIZE],
            f"check {HEADER_CHECK} failed: the stored file does not start with the column "
            "contract's header",
        ),
    ],
    ids=["whole", "bom"],
)
def test_checks_compare_the_stored_bytes_with_the_written_ones(stored, failed, reason):
    evaluations = evaluate(
        partition_key="p",
        database_rows=1,
        file_rows=1,
        written_bytes=len(HEADER) + 3,
        stored_bytes=len(stored),
        stored_start=stored[: len(HEADER)],
        blocking=True,
    )
    assert [e.check_name for e in evaluations if not e.passed] == failed
    assert failure_reason(evaluations) == reason


ROW = b'"00000000-0000-4000-8000-00000000c001","secret-contact",completed\r\n'
# Many distinct rows: their gzip is longer than the start the check reads.
MANY_ROWS = b"".join(b'"%d","secret-%d",completed\r\n' % (i, i * 7919) for i in range(20_000))


def header_check(stored: bytes, **options) -> tuple[bool, str | None]:
    """(passed, failure reason) of the header check on an object that stores `stored`."""
    evaluations = evaluate(
        partition_key="p",
        database_rows=1,
        file_rows=1,
        written_bytes=len(stored),
        stored_bytes=len(stored),
        stored_start=stored[: stored_start_bytes(**options)],
        blocking=True,
        **options,
    )
    (check,) = [e for e in evaluations if e.check_name == HEADER_CHECK]
    shown = repr([(e.description, e.metadata) for e in evaluations])
    assert b"secret" not in shown.encode() and "c001" not in shown  # never the file's content
    return check.passed, failure_reason(evaluations)


def test_with_bom_the_header_must_follow_the_byte_order_mark():
    assert header_check(BOM + HEADER + ROW, bom=True, gzip=False) == (True, None)
    assert header_check(HEADER + ROW, bom=True, gzip=False) == (
        False,
        f"check {HEADER_CHECK} failed: the stored file does not start with the byte-order "
        "mark and the column contract's header",
    )


@pytest.mark.parametrize("bom", [False, True])
def test_a_gzip_objects_header_is_checked_on_its_decompressed_start(bom):
    csv_bytes = (BOM if bom else b"") + HEADER + MANY_ROWS
    stored = gzip.compress(csv_bytes, compresslevel=6, mtime=0)
    assert len(stored) > GZIP_START_BYTES  # only the start is read, and that is enough

    assert header_check(stored, bom=bom, gzip=True) == (True, None)


@pytest.mark.parametrize(
    "stored",
    [
        HEADER + ROW,  # stored uncompressed
        gzip.compress(ROW + HEADER),  # another file's gzip
        gzip.compress(BOM + HEADER + ROW),  # a BOM that was not asked for
        gzip.compress(HEADER + ROW)[:12],  # cut short
        b"",
    ],
    ids=["plain", "other content", "unasked bom", "truncated", "empty"],
)
def test_a_gzip_object_that_does_not_gunzip_to_the_header_fails_without_showing_it(stored):
    passed, reason = header_check(stored, bom=False, gzip=True)
    assert not passed
    assert reason == (
        f"check {HEADER_CHECK} failed: the stored file, gunzipped, does not start with the "
        "column contract's header"
    )


def test_a_row_count_that_differs_from_the_database_fails_with_both_counts():
    evaluations = evaluate(
        partition_key="p",
        database_rows=1000,
        file_rows=999,
        written_bytes=10,
        stored_bytes=10,
        stored_start=HEADER,
        blocking=True,
    )
    assert failure_reason(evaluations) == (
        f"check {ROWS} failed: the file has 999 rows, the database returned 1000"
    )
