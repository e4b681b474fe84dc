import csv
import gzip
import hashlib
import io
from urllib.parse import parse_qs, unquote, urlparse

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource
from sqlalchemy import select

from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.export_file.csv_format import BOM, CSV_COLUMNS, HEADER
from voicesurvey_exports.pipeline.assets import EXPORT_JOB_TAG, campaign_export
from voicesurvey_exports.pipeline.metadata import readable_size
from voicesurvey_exports.pipeline.resources import ExportDestination

from .conftest import TEST_BUCKET
from .dagster_harness import export_resources, materialize_export, run_failure_sensor


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def read_export(s3_client, key: str) -> list[dict]:
    body = s3_client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(body, newline="")))


def test_requested_job_becomes_completed_with_only_terminal_contacts(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    other_campaign = app_data.campaign("Other")
    manager = app_data.user("campaign_manager")
    exported = {}
    for state in ("completed", "refused", "not_reached", "excluded"):
        contact = app_data.contact(campaign, state, external_contact_id=f"ext-{state}")
        exported[str(contact)] = state
    answered = app_data.contact(campaign, "completed", external_contact_id="=cmd()")
    app_data.response(answered, campaign, 'Sì, "bene"', "line1\nline2", "=1+1")
    exported[str(answered)] = "completed"
    for state in ("pending", "in_progress"):
        app_data.contact(campaign, state)
    app_data.contact(other_campaign, "completed")
    job_id = app_data.export_job(campaign, manager)

    result = materialize_export(instance, database_url, campaign, job_id)

    assert result.success
    job = app_data.job_row(job_id)
    assert job["status"] == "completed"
    assert job["total_records"] == 5
    # The run's own object under the job's (ExportObjects.key).
    assert job["s3_key"] == f"exports/{campaign}/{job_id}/{result.run_id}.csv"
    assert job["url_expires_at"] is not None and job["completed_at"] is not None
    rows = read_export(s3_client, job["s3_key"])
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [row["contact_id"] for row in rows] == sorted(exported)
    assert {row["contact_id"]: row["outcome"] for row in rows} == exported
    answered_row = next(row for row in rows if row["contact_id"] == str(answered))
    assert answered_row["external_contact_id"] == "'=cmd()"
    assert [answered_row[f"q{i}_answer"] for i in (1, 2, 3)] == [
        'Sì, "bene"',
        "line1\nline2",
        "'=1+1",
    ]
    assert answered_row["completed_at"].endswith("Z")


def test_object_is_private_encrypted_csv_with_a_named_attachment_link(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign("Ümfrage Frühling 2026")
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())

    assert materialize_export(instance, database_url, campaign, job_id, ttl=900).success

    job = app_data.job_row(job_id)
    head = s3_client.head_object(Bucket=TEST_BUCKET, Key=job["s3_key"])
    assert head["ContentType"] == "text/csv; charset=utf-8"
    assert head["ServerSideEncryption"] == "AES256"
    grants = s3_client.get_object_acl(Bucket=TEST_BUCKET, Key=job["s3_key"])["Grants"]
    assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]  # the owner only
    assert all("URI" not in grant["Grantee"] for grant in grants)  # no AllUsers group
    assert str(job_id) in job["s3_key"]  # the random job UUID: keys cannot be guessed
    query = parse_qs(urlparse(job["download_url"]).query)
    disposition = query["response-content-disposition"][0]
    assert disposition.startswith('attachment; filename="Umfrage-Fruhling-2026-')
    # Browsers take the campaign's real name from filename* (RFC 5987).
    star = disposition.split("; filename*=UTF-8''")[1]
    assert unquote(star) == f"Ümfrage Frühling 2026 {job['created_at'].date().isoformat()}.csv"
    assert query.get("X-Amz-Expires", query.get("Expires"))  # a time-limited link


def test_a_completed_job_states_the_size_and_sha256_of_the_bytes_a_download_gets(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    for state in ("completed", "refused"):
        contact = app_data.contact(campaign, state)
        app_data.response(contact, campaign, "Große Qualität 👍", "=1+1")
    job_id = app_data.export_job(campaign, app_data.user())

    assert materialize_export(instance, database_url, campaign, job_id).success

    job = app_data.job_row(job_id)
    stored = s3_client.get_object(Bucket=TEST_BUCKET, Key=job["s3_key"])
    body = stored["Body"].read()
    assert job["size_bytes"] == len(body) == stored["ContentLength"]
    assert job["sha256"] == hashlib.sha256(body).hexdigest()
    assert stored["Metadata"] == {"sha256": job["sha256"]}  # checkable in S3 too


def campaign_with_awkward_answers(app_data):
    campaign = app_data.campaign("Große Qualität – Q4")
    for state in ("completed", "refused", "excluded"):
        contact = app_data.contact(campaign, state, external_contact_id="=crm")
        app_data.response(contact, campaign, "Große Qualität 👍", 'Sì, "bene"\nciao', None)
    return campaign


def export_with(instance, database_url, app_data, campaign, **options) -> dict:
    """The completed job row of an export of the campaign requested with these options."""
    job_id = app_data.export_job(campaign, app_data.user(), **options)
    result = materialize_export(instance, database_url, campaign, job_id)
    assert result.success
    job = app_data.job_row(job_id)
    assert job["status"] == "completed", job["error_message"]
    return job


def stored_object(s3_client, job: dict) -> tuple[bytes, dict]:
    """The stored bytes, exactly as a download gets them, and the object's GET answer."""
    stored = s3_client.get_object(Bucket=TEST_BUCKET, Key=job["s3_key"])
    body = stored["Body"].read()
    # The job states the size and SHA-256 of exactly these bytes, and so does the object.
    assert job["size_bytes"] == len(body) == stored["ContentLength"]
    assert job["sha256"] == hashlib.sha256(body).hexdigest()
    assert stored["Metadata"] == {"sha256": job["sha256"]}
    return body, stored


def link_names_and_type(download_url: str) -> tuple[str, str, str]:
    """(ASCII filename, filename*, content type) the link makes S3 answer with."""
    query = parse_qs(urlparse(download_url).query)
    disposition = query["response-content-disposition"][0]
    fallback = disposition.split('filename="')[1].split('"')[0]
    return (
        fallback,
        unquote(disposition.split("; filename*=UTF-8''")[1]),
        query["response-content-type"][0],
    )


def test_a_bom_export_starts_with_the_byte_order_mark_and_holds_the_same_csv(
    instance, database_url, app_data, s3_client
):
    campaign = campaign_with_awkward_answers(app_data)
    plain_job = export_with(instance, database_url, app_data, campaign)
    bom_job = export_with(instance, database_url, app_data, campaign, bom=True)

    plain, _ = stored_object(s3_client, plain_job)
    body, stored = stored_object(s3_client, bom_job)

    assert body.startswith(BOM + HEADER)
    assert body == BOM + plain
    assert stored["ContentType"] == "text/csv; charset=utf-8"
    assert bom_job["s3_key"].endswith(f"{bom_job['id']}/{bom_job['dagster_run_id']}.csv")
    assert link_names_and_type(bom_job["download_url"])[1].endswith(".csv")


def test_a_gzip_export_is_the_gzip_of_the_same_csv_and_downloads_as_csv_gz(
    instance, database_url, app_data, s3_client
):
    campaign = campaign_with_awkward_answers(app_data)
    plain_job = export_with(instance, database_url, app_data, campaign)
    gzip_job = export_with(instance, database_url, app_data, campaign, compression="gzip")

    plain, _ = stored_object(s3_client, plain_job)
    body, stored = stored_object(s3_client, gzip_job)  # size and sha256: compressed bytes

    assert gzip_job["s3_key"] == (
        f"exports/{campaign}/{gzip_job['id']}/{gzip_job['dagster_run_id']}.csv.gz"
    )
    assert stored["ContentType"] == "application/gzip"
    assert stored["ServerSideEncryption"] == "AES256"
    assert gzip.decompress(body) == plain
    assert gzip_job["total_records"] == plain_job["total_records"] == 3
    shown = instance.get_latest_materialization_event(campaign_export.key)
    metadata = shown.asset_materialization.metadata
    assert (metadata["compression"].value, metadata["size_bytes"].value) == ("gzip", len(body))
    day = gzip_job["created_at"].date().isoformat()
    assert link_names_and_type(gzip_job["download_url"]) == (
        f"Groe-Qualitat-Q4-{day}.csv.gz",
        f"Große Qualität – Q4 {day}.csv.gz",
        "application/gzip",
    )


def test_a_bom_and_gzip_export_gunzips_to_the_bom_export(
    instance, database_url, app_data, s3_client
):
    campaign = campaign_with_awkward_answers(app_data)
    bom_job = export_with(instance, database_url, app_data, campaign, bom=True)
    both_job = export_with(instance, database_url, app_data, campaign, bom=True, compression="gzip")

    with_bom, _ = stored_object(s3_client, bom_job)
    body, _ = stored_object(s3_client, both_job)

    assert gzip.decompress(body) == with_bom


def test_a_ui_materialisation_exports_a_plain_csv(instance, database_url, app_data, s3_client):
    campaign = campaign_with_awkward_answers(app_data)

    result = materialize_export(instance, database_url, campaign)

    assert result.success
    with app_data.engine.connect() as conn:
        (job,) = conn.execute(select(export_jobs)).mappings().all()
    assert (job["bom"], job["compression"]) == (False, "none")
    body, _ = stored_object(s3_client, dict(job))
    assert body.startswith(HEADER) and job["s3_key"].endswith(".csv")


def test_materialisation_metadata_shows_counts_not_contact_data(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign("Kundenzufriedenheit Q4 – Große Qualität")
    for state in ("completed", "completed", "refused"):
        contact = app_data.contact(campaign, state, external_contact_id="secret-id")
        app_data.response(contact, campaign, "secret answer")
    job_id = app_data.export_job(campaign, app_data.user())

    result = materialize_export(instance, database_url, campaign, job_id)

    metadata = result.asset_materializations_for_node("campaign_export")[0].metadata
    values = {key: value.value for key, value in metadata.items()}
    # Dagster's standard keys, which its UI and catalog understand.
    assert values["dagster/partition_row_count"] == 3
    key = f"exports/{campaign}/{job_id}/{result.run_id}.csv"
    assert values["dagster/uri"] == f"s3://{TEST_BUCKET}/{key}"
    schema = values["dagster/column_schema"]
    assert [(column.name, column.type) for column in schema.columns][:5] == [
        ("campaign_id", "uuid"),
        ("contact_id", "uuid"),
        ("external_contact_id", "text"),
        ("outcome", "text"),
        ("attempts_count", "integer"),
    ]
    assert [column.name for column in schema.columns] == list(CSV_COLUMNS)
    # The name people know the campaign by, and the file's size as stored.
    assert values["campaign"] == "Kundenzufriedenheit Q4 – Große Qualität"
    stored = s3_client.head_object(Bucket=TEST_BUCKET, Key=key)["ContentLength"]
    assert values["size_bytes"] == stored and values["size"] == f"{stored} B"
    assert values["outcome/completed"] == 2 and values["outcome/refused"] == 1
    assert values["outcome/excluded"] == 0
    assert values["export_job_id"] == str(job_id)
    assert (values["compression"], values["bom"]) == ("none", False)
    assert "secret" not in repr(values)
    assert "X-Amz" not in repr(values) and "https://" not in repr(values)  # no link


@pytest.mark.parametrize(
    ("byte_count", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB")],
)
def test_readable_size(byte_count, shown):
    assert readable_size(byte_count) == shown


def test_campaign_without_terminal_contacts_completes_with_header_only_file(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    app_data.contact(campaign, "pending")
    job_id = app_data.export_job(campaign, app_data.user())

    assert materialize_export(instance, database_url, campaign, job_id).success

    job = app_data.job_row(job_id)
    assert (job["status"], job["total_records"]) == ("completed", 0)
    body = s3_client.get_object(Bucket=TEST_BUCKET, Key=job["s3_key"])["Body"].read()
    assert body.decode() == ",".join(CSV_COLUMNS) + "\r\n"


def test_ui_materialisation_inserts_its_own_export_job(instance, database_url, app_data, s3_client):
    campaign = app_data.campaign()
    app_data.contact(campaign, "refused")

    result = materialize_export(instance, database_url, campaign)

    assert result.success
    with app_data.engine.connect() as conn:
        jobs = conn.execute(select(export_jobs)).all()
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.status, job.requested_by_user_id, job.total_records) == ("completed", None, 1)
    tagged = instance.get_run_by_id(result.run_id).tags[EXPORT_JOB_TAG]
    assert tagged == str(job.id)


def test_ui_materialisation_of_unknown_campaign_fails_clearly_and_writes_nothing(
    instance, database_url, app_data, s3_client
):
    missing = "7c0a6a4e-0000-4000-8000-000000000000"
    result = materialize_export(instance, database_url, missing)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description == f"campaign {missing} does not exist"
    assert app_data.count(export_jobs) == 0


def test_failed_upload_fails_the_job_with_a_one_line_reason(instance, postgres_url, s3_client):
    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())

    result = materialize_export(instance, postgres_url, campaign, job_id, bucket="no-such-bucket")
    assert not result.success
    run_failure_sensor(instance, result, postgres_url, bucket="no-such-bucket")

    job = app_data.job_row(job_id)
    assert job["status"] == "failed"
    assert job["error_message"].startswith(
        f"upload to s3://no-such-bucket/exports/{campaign}/{job_id}/{result.run_id}.csv "
        "failed after 3 attempts: "
    )
    assert "NoSuchBucket" in job["error_message"] and "\n" not in job["error_message"]
    assert job["download_url"] is None


# Timestamps PostgreSQL stores that Python's datetime cannot hold, and what the CSV shows.
POSTGRES_ONLY_TIMESTAMPS = {
    "infinity": "infinity",
    "-infinity": "-infinity",
    "0044-03-15 12:00:00+00 BC": "-0043-03-15T12:00:00Z",
    "0001-01-01 00:00:00+00 BC": "0000-01-01T00:00:00Z",
    "12026-01-01 00:00:00+00": "+12026-01-01T00:00:00Z",
    "2026-11-16 09:49:55.123456+00": "2026-11-16T09:49:55.123456Z",
}


def postgres_timestamp(text_value: str):
    from sqlalchemy import DateTime, cast, literal

    return cast(literal(text_value), DateTime(timezone=True))


def test_every_timestamp_postgres_stores_is_exported_exactly(instance, postgres_url, s3_client):
    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    campaign = app_data.campaign()
    contacts = {
        str(app_data.contact(campaign, last_attempt_at=postgres_timestamp(stored))): shown
        for stored, shown in POSTGRES_ONLY_TIMESTAMPS.items()
    }
    job_id = app_data.export_job(campaign, app_data.user())

    assert materialize_export(instance, postgres_url, campaign, job_id).success

    job = app_data.job_row(job_id)
    assert job["status"] == "completed"
    rows = read_export(s3_client, job["s3_key"])
    assert {row["contact_id"]: row["last_attempt_at"] for row in rows} == contacts


def test_a_timestamp_that_would_not_read_back_fails_the_job_naming_contact_and_column(
    instance, postgres_url, s3_client, monkeypatch
):
    """The render checks every timestamp cell: had it mangled one (as it once wrote
    "infinityZT"), the job fails with one line and no file is stored."""
    import pyarrow.compute as pc

    from voicesurvey_exports.app_db.engine import get_engine
    from voicesurvey_exports.export_file import timestamps

    from .conftest import AppData

    def mangle(spool, utc=True):  # the rewrite of before: "+00" cut at the 20th character
        cells = pc.utf8_replace_slice(spool, 19, 2**31 - 1, "Z")
        return pc.utf8_replace_slice(cells, 10, 11, "T")

    monkeypatch.setattr(timestamps, "iso_cells", mangle)
    app_data = AppData(get_engine(postgres_url))
    campaign = app_data.campaign()
    app_data.contact(campaign, "refused")
    contact = app_data.contact(campaign, "refused", last_attempt_at=postgres_timestamp("infinity"))
    job_id = app_data.export_job(campaign, app_data.user())

    result = materialize_export(instance, postgres_url, campaign, job_id)
    assert not result.success
    run_failure_sensor(instance, result, postgres_url)

    job = app_data.job_row(job_id)
    assert (job["status"], job["s3_key"], job["download_url"]) == ("failed", None, None)
    assert job["error_message"] == (
        f"render_csv failed: TimestampMismatch: contact {contact}: last_attempt_at "
        "'infinity' would be written as 'infinityZT', which does not read back as that "
        "instant in ISO 8601 UTC"
    )
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("KeyCount", 0) == 0


def test_job_for_another_campaign_partition_fails_with_reason(
    instance, database_url, app_data, s3_client
):
    campaign, other = app_data.campaign(), app_data.campaign("Other")
    job_id = app_data.export_job(campaign, app_data.user())

    result = materialize_export(instance, database_url, other, job_id)
    run_failure_sensor(instance, result, database_url)

    job = app_data.job_row(job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == (
        f"export job {job_id} belongs to campaign {campaign}, not to partition {other}"
    )


def test_a_new_run_with_a_failed_jobs_tag_does_not_take_the_job_over(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())
    failed = materialize_export(instance, database_url, campaign, job_id, bucket="no-such-bucket")
    run_failure_sensor(instance, failed, database_url, bucket="no-such-bucket")
    reason = app_data.job_row(job_id)["error_message"]

    # Only a retry or re-execution of the failed run may (tests/test_reexecution.py).
    assert not materialize_export(instance, database_url, campaign, job_id).success

    job = app_data.job_row(job_id)
    assert (job["status"], job["error_message"]) == ("failed", reason)


def test_no_contact_data_is_left_on_local_disk_after_success_or_failure(
    instance, database_url, app_data, s3_client, tmp_path
):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed", external_contact_id="private")
    ok = materialize_export(instance, database_url, campaign, spool_dir=str(spool_dir))
    failed = materialize_export(
        instance, database_url, campaign, spool_dir=str(spool_dir), bucket="no-such-bucket"
    )
    assert ok.success and not failed.success
    assert list(spool_dir.iterdir()) == []


def test_failed_run_that_dagster_will_retry_leaves_the_job_open(
    instance, database_url, app_data, s3_client
):
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())
    result = materialize_export(instance, database_url, campaign, job_id, bucket="no-such-bucket")
    instance.add_run_tags(result.run_id, {"dagster/will_retry": "true"})

    run_failure_sensor(instance, result, database_url)

    assert app_data.job_row(job_id)["status"] == "running"


def test_objects_use_sse_kms_with_a_configured_key(instance, postgres_url, s3_client):
    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    key_id = "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    job_id = app_data.export_job(campaign, app_data.user())

    assert materialize_export(instance, postgres_url, campaign, job_id, kms_key_id=key_id).success

    head = s3_client.head_object(Bucket=TEST_BUCKET, Key=app_data.job_row(job_id)["s3_key"])
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_id)


def test_run_logs_and_events_hold_no_contact_data_or_download_links(
    instance, database_url, app_data, s3_client, caplog, capfd
):
    campaign = app_data.campaign()
    secrets = ["+390551234567", "private.person@example.org", "ext-secret-77", "risposta segreta"]
    contact = app_data.contact(
        campaign,
        "completed",
        phone_number=secrets[0],
        email=secrets[1],
        external_contact_id=secrets[2],
    )
    app_data.response(contact, campaign, secrets[3])
    job_id = app_data.export_job(campaign, app_data.user())

    assert materialize_export(instance, database_url, campaign, job_id).success

    url = app_data.job_row(job_id)["download_url"]
    records = instance.all_logs(instance.get_runs()[0].run_id)
    captured = capfd.readouterr()
    everything = "\n".join(
        [repr(record) for record in records] + [caplog.text, captured.out, captured.err]
    )
    assert url and "Signature" in url
    for forbidden in [*secrets, url, url.split("?", 1)[1], "X-Amz-Signature"]:
        assert forbidden not in everything, forbidden


class S3FailingOnPart(S3Resource):
    """The real S3 client, with the service failing one multipart UploadPart call."""

    fail_part: int = 2

    def get_client(self):
        client = super().get_client()

        def fail(params, **_):
            if params.get("PartNumber") == self.fail_part:
                raise ConnectionError(f"connection reset while uploading part {self.fail_part}")

        client.meta.events.register("before-parameter-build.s3.UploadPart", fail)
        return client


class DestinationFailingOnPart(ExportDestination):
    def s3_resource(self) -> S3Resource:
        return S3FailingOnPart(region_name=self.region_name, endpoint_url=self.endpoint_url)


def test_upload_failing_part_way_leaves_no_partial_object_and_no_link(
    instance, postgres_url, s3_client
):
    from sqlalchemy import text

    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    campaign = app_data.campaign()
    with app_data.engine.begin() as conn:  # about 20 MB of CSV: three multipart parts
        conn.execute(
            text("""
            INSERT INTO contacts (campaign_id, external_contact_id, phone_number, state)
            SELECT :c, repeat('x', 300) || g, '+39', 'refused' FROM generate_series(1, 60000) g
        """),
            {"c": campaign},
        )
    job_id = app_data.export_job(campaign, app_data.user())
    instance.add_dynamic_partitions("campaigns", [str(campaign)])
    resources = export_resources(postgres_url)
    destination = resources["destination"]
    resources["destination"] = DestinationFailingOnPart(
        **{field: getattr(destination, field) for field in ExportDestination.model_fields}
    )

    result = dg.materialize(
        [campaign_export],
        partition_key=str(campaign),
        instance=instance,
        resources=resources,
        tags={EXPORT_JOB_TAG: str(job_id)},
        raise_on_error=False,
    )
    run_failure_sensor(instance, result, postgres_url)

    job = app_data.job_row(job_id)
    key = f"exports/{campaign}/{job_id}/{result.run_id}.csv"
    assert job["status"] == "failed" and job["download_url"] is None
    assert job["error_message"].startswith(f"upload to s3://{TEST_BUCKET}/{key} failed after 3")
    assert "connection reset while uploading part 2" in job["error_message"]
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("KeyCount") == 0
    assert not s3_client.list_multipart_uploads(Bucket=TEST_BUCKET).get("Uploads")


def test_database_connection_dropped_mid_extract_is_retried_then_fails_cleanly(
    instance, postgres_url, s3_client
):
    """Every extract attempt loses its connection (pg_terminate_backend while COPY waits
    on a lock): the op is retried, then the job fails with the reason; nothing is left."""
    import threading

    import psycopg2

    from voicesurvey_exports.app_db.engine import get_engine

    from .conftest import AppData

    app_data = AppData(get_engine(postgres_url))
    campaign = app_data.campaign()
    app_data.contact(campaign, "completed")
    job_id = app_data.export_job(campaign, app_data.user())
    locker = psycopg2.connect(postgres_url)
    locker.cursor().execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")  # COPY will wait
    done = threading.Event()
    terminated = []

    def drop_copy_connections():
        killer = psycopg2.connect(postgres_url)
        killer.autocommit = True
        while not done.wait(0.05):
            with killer.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'COPY (SELECT%'"
                )
                terminated.extend(row for row in cursor.fetchall() if row[0])
        killer.close()

    thread = threading.Thread(target=drop_copy_connections)
    thread.start()
    try:
        result = materialize_export(instance, postgres_url, campaign, job_id)
    finally:
        done.set()
        thread.join()
        locker.rollback()
        locker.close()
    run_failure_sensor(instance, result, postgres_url)

    assert not result.success and len(terminated) == 3  # the first try and two retries
    job = app_data.job_row(job_id)
    assert job["status"] == "failed" and job["download_url"] is None
    assert job["error_message"].startswith("extract_terminal_contacts failed: ")
    assert "terminat" in job["error_message"] and "\n" not in job["error_message"]
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("KeyCount") == 0
