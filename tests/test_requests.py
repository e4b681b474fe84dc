import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.requests import (
    ExportRequests,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)

from .conftest import TEST_BUCKET


@pytest.fixture
def api(engine, s3_client) -> ExportRequests:
    return ExportRequests(
        engine=engine, s3_client=s3_client, bucket=TEST_BUCKET, url_ttl_seconds=600
    )


@pytest.fixture
def completed_job(app_data, s3_client):
    campaign = app_data.campaign("Autumn NPS")
    key = f"exports/{campaign}/{uuid.uuid4()}.csv"
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"campaign_id\r\n")
    return app_data.export_job(
        campaign,
        app_data.user(),
        status="completed",
        s3_key=key,
        download_url="old",
        total_records=0,
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
