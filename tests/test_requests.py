import uuid
from urllib.parse import parse_qs, urlparse

import boto3
import botocore.session
import pytest
from botocore.credentials import CredentialResolver
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import Engine, text

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.errors import AppDatabaseError
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.service.requests import (
    ExportRequests,
    FileGone,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
    describe_storage_error,
)

from .conftest import DEFAULT_OPTIONS, TEST_BUCKET, TEST_REGION, AppData, request_api


@pytest.fixture
def api(engine, s3_client) -> ExportRequests:
    return request_api(engine, s3_client)


@pytest.fixture
def completed_job(app_data, s3_client):
    campaign = app_data.campaign("Autumn NPS")
    return app_data.completed_export(
        campaign, app_data.user(), s3_client=s3_client, total_records=0
    )


def call(api, operation, campaign_id, job_id, user_id):
    if operation == "request":
        return api.request_export(campaign_id, user_id)
    if operation == "list":
        return api.list_exports(campaign_id, user_id)
    if operation == "get":
        return api.get_export(job_id, user_id)
    return api.refresh_download_url(job_id, user_id)


OPERATIONS = ["request", "list", "get", "refresh"]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("role", ["campaign_manager", "admin"])
def test_managers_and_admins_may_use_every_operation(api, app_data, completed_job, role, operation):
    job = app_data.job_row(completed_job)
    result = call(api, operation, job["campaign_id"], completed_job, app_data.user(role))
    assert result is not None


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("who", ["viewer", "unknown"])
def test_viewers_and_unknown_users_get_a_permission_error_and_nothing_changes(
    api, app_data, completed_job, who, operation
):
    user = app_data.user("viewer") if who == "viewer" else uuid.uuid4()
    before = app_data.job_row(completed_job)
    with pytest.raises(PermissionDenied, match=str(user)):
        call(api, operation, before["campaign_id"], completed_job, user)
    assert app_data.count(export_jobs) == 1
    assert app_data.job_row(completed_job) == before


def test_request_returns_a_pending_job_for_the_user(api, app_data):
    campaign, user = app_data.campaign(), app_data.user()
    job = api.request_export(str(campaign), str(user))
    assert (job.status, job.campaign_id, job.requested_by_user_id) == ("pending", campaign, user)
    assert app_data.job_row(job.id)["status"] == "pending"


def test_a_request_without_options_asks_for_a_plain_csv(api, app_data):
    job = api.request_export(app_data.campaign(), app_data.user())
    assert job.options == {**DEFAULT_OPTIONS, "bom": False, "compression": "none"}
    assert job.to_json()["options"] == {**DEFAULT_OPTIONS, "bom": False, "compression": "none"}


def test_a_jobs_json_shows_its_times_to_the_microsecond_as_the_http_api_does(api, app_data):
    from datetime import UTC, datetime

    from voicesurvey_exports.service.http.schemas import ExportJobResponse

    campaign, user = app_data.campaign(), app_data.user()
    job_id = app_data.export_job(
        campaign, user, created_at=datetime(2026, 11, 16, 9, 49, 55, 123456, UTC)
    )
    whole = app_data.export_job(
        campaign, user, created_at=datetime(2026, 11, 16, 9, 49, 56, tzinfo=UTC)
    )

    job = api.get_export(job_id, user)
    assert job.to_json()["created_at"] == "2026-11-16T09:49:55.123456Z"
    assert api.get_export(whole, user).to_json()["created_at"] == "2026-11-16T09:49:56Z"
    assert (
        ExportJobResponse.of(job).model_dump(mode="json")["created_at"]
        == (job.to_json()["created_at"])
    )


def test_a_requests_options_are_stored_on_its_job(api, app_data):
    campaign, user = app_data.campaign(), app_data.user()

    job = api.request_export(campaign, user, bom=True, compression="gzip")

    assert job.to_json()["options"] == {**DEFAULT_OPTIONS, "bom": True, "compression": "gzip"}
    stored = app_data.job_row(job.id)
    assert (stored["status"], stored["bom"], stored["compression"]) == ("pending", True, "gzip")
    assert api.get_export(job.id, user).options == {
        **DEFAULT_OPTIONS,
        "bom": True,
        "compression": "gzip",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compression": "zip"}, "option compression 'zip' must be one of: none, gzip"),
        ({"compression": "GZIP"}, "option compression 'GZIP' must be one of: none, gzip"),
        ({"compression": None}, "option compression None must be one of: none, gzip"),
        ({"bom": "true"}, "option bom 'true' must be true or false"),
        ({"bom": 1}, "option bom 1 must be true or false"),
    ],
)
def test_an_unknown_option_value_is_refused_naming_it_and_nothing_is_written(
    api, app_data, options, message
):
    with pytest.raises(InvalidRequest) as refused:
        api.request_export(app_data.campaign(), app_data.user(), **options)
    assert str(refused.value) == message
    assert app_data.count(export_jobs) == 0


def test_list_shows_only_the_campaigns_jobs_newest_first(api, app_data):
    campaign, other, user = app_data.campaign(), app_data.campaign("Other"), app_data.user()
    older, newer = app_data.export_job(campaign, user), app_data.export_job(campaign, user)
    app_data.export_job(other, user)
    assert [job.id for job in api.list_exports(campaign, user)] == [newer, older]


def test_refresh_re_signs_the_stored_key_with_a_new_expiry(api, app_data, completed_job):
    job = api.refresh_download_url(completed_job, app_data.user())
    stored = app_data.job_row(completed_job)
    assert stored["download_url"] == job.download_url != "old"
    assert job.s3_key in urlparse(job.download_url).path
    query = parse_qs(urlparse(job.download_url).query)
    assert "Autumn-NPS-" in query["response-content-disposition"][0]
    assert job.url_expires_at is not None


def test_refresh_of_a_gzip_export_still_downloads_as_csv_gz(api, app_data, s3_client):
    campaign = app_data.campaign("Autumn NPS")
    job_id = app_data.completed_export(
        campaign, app_data.user(), s3_client=s3_client, compression="gzip", total_records=0
    )

    job = api.refresh_download_url(job_id, app_data.user())

    assert job.s3_key.endswith(f"{job_id}.csv.gz")
    query = parse_qs(urlparse(job.download_url).query)
    disposition = query["response-content-disposition"][0]
    assert disposition.split('filename="')[1].split('"')[0].endswith(".csv.gz")
    assert disposition.endswith(".csv.gz")  # filename*, the name browsers take
    assert query["response-content-type"] == ["application/gzip"]


def test_refresh_of_an_unfinished_job_is_refused(api, app_data):
    job = app_data.export_job(app_data.campaign(), app_data.user())
    with pytest.raises(InvalidRequest, match=f"export job {job} is pending"):
        api.refresh_download_url(job, app_data.user())


@pytest.mark.parametrize("bad", ["", "42", "not-a-uuid", "7c0a6a4e-0000-4000-8000"])
def test_malformed_ids_name_the_value(api, app_data, bad):
    user = app_data.user()
    with pytest.raises(InvalidRequest, match=f"campaign id {bad!r} is not a valid UUID"):
        api.request_export(bad, user)
    with pytest.raises(InvalidRequest, match=f"export job id {bad!r} is not a valid UUID"):
        api.get_export(bad, user)
    with pytest.raises(InvalidRequest, match=f"user id {bad!r} is not a valid UUID"):
        api.list_exports(app_data.campaign(), bad)
    assert app_data.count(export_jobs) == 0


def test_unknown_campaign_and_job_are_not_found_and_nothing_is_written(api, app_data):
    user, missing = app_data.user(), uuid.uuid4()
    with pytest.raises(NotFound, match=f"campaign {missing} does not exist"):
        api.request_export(missing, user)
    with pytest.raises(NotFound, match=f"export job {missing} does not exist"):
        api.get_export(missing, user)
    assert app_data.count(export_jobs) == 0


def s3_client_without_credentials():
    """A real boto3 client that finds no credentials anywhere (as on a misconfigured host)."""
    session = botocore.session.Session()
    session.register_component("credential_provider", CredentialResolver(providers=[]))
    return boto3.Session(botocore_session=session, region_name=TEST_REGION).client("s3")


def test_refresh_without_s3_credentials_is_one_line_storage_error(api, app_data, completed_job):
    api = request_api(api.engine, s3_client_without_credentials())
    before = app_data.job_row(completed_job)
    with pytest.raises(StorageUnavailable) as error:
        api.refresh_download_url(completed_job, app_data.user())
    assert str(error.value) == (
        "cannot check the export file in S3: NoCredentialsError: Unable to locate credentials"
    )
    assert app_data.job_row(completed_job) == before


def test_refresh_of_a_file_gone_from_s3_records_it_and_gives_no_link(
    api, app_data, completed_job, s3_client
):
    key = app_data.job_row(completed_job)["s3_key"]
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=key)
    with pytest.raises(FileGone, match="the file no longer exists in S3; request a new export"):
        api.refresh_download_url(completed_job, app_data.user())
    row = app_data.job_row(completed_job)
    assert (row["status"], row["s3_key"], row["download_url"], row["url_expires_at"]) == (
        "completed",
        None,
        None,
        None,
    )
    assert row["error_message"] == "the file no longer exists in S3; request a new export"
    # Asking again answers the same way without asking S3.
    with pytest.raises(FileGone, match="has no file: the file no longer exists in S3"):
        api.refresh_download_url(completed_job, app_data.user())


class RetentionRacesTheRefresh:
    """An S3 client on which retention deletes the file (and clears the job's key) right
    after the refresh has checked that the file exists."""

    def __init__(self, client, engine):
        self._client, self._engine = client, engine

    def head_object(self, **params):
        found = self._client.head_object(**params)
        self._client.delete_object(**params)
        with self._engine.begin() as conn:
            conn.execute(
                export_jobs.update()
                .where(export_jobs.c.s3_key == params["Key"])
                .values(s3_key=None, download_url=None, error_message="deleted by retention")
            )
        return found

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_refresh_never_stores_a_link_to_a_file_deleted_meanwhile(
    api, app_data, completed_job, s3_client
):
    api = request_api(api.engine, RetentionRacesTheRefresh(s3_client, app_data.engine))
    with pytest.raises(FileGone, match="deleted or replaced while the link was being refreshed"):
        api.refresh_download_url(completed_job, app_data.user())
    row = app_data.job_row(completed_job)
    assert (row["download_url"], row["error_message"]) == (None, "deleted by retention")


def database_refusing_links(create_postgres_database) -> Engine:
    """An app database that refuses to store any real download link (a CHECK constraint),
    so that storing a freshly signed link fails inside PostgreSQL."""
    engine = get_engine(create_postgres_database("refuse_links"))
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE export_jobs ADD CONSTRAINT short_links "
                "CHECK (length(download_url) < 10)"
            )
        )
    return engine


@pytest.fixture
def links_refused_database(create_postgres_database) -> Engine:
    return database_refusing_links(create_postgres_database)


def test_a_failed_link_write_is_one_line_without_the_signed_link(links_refused_database, s3_client):
    data = AppData(links_refused_database)
    job = data.completed_export(s3_client=s3_client)
    api = request_api(links_refused_database, s3_client)
    with pytest.raises(AppDatabaseError) as error:
        api.refresh_download_url(job, data.user())
    message = str(error.value)
    assert "short_links" in message and "\n" not in message
    assert "X-Amz" not in message and "https://" not in message
    assert data.job_row(job)["download_url"] == "old"


def test_storage_errors_lose_any_url_query_string():
    signed = "https://b.s3.amazonaws.com/k.csv?X-Amz-Signature=abc&X-Amz-Credential=AKIA"
    described = describe_storage_error(EndpointConnectionError(endpoint_url=signed))
    assert described == (
        "EndpointConnectionError: Could not connect to the endpoint URL: "
        '"https://b.s3.amazonaws.com/k.csv"'
    )
