"""EXPORT_ACCESS_POLICY: under "role" every campaign manager and admin sees every
campaign's exports; under "owner" a campaign manager sees only the campaigns they
created, and anything else answers exactly like an id that does not exist."""

import uuid

import pytest
from fastapi.testclient import TestClient

from voicesurvey_exports.app_db import schema
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.service.http.app import create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier
from voicesurvey_exports.service.requests import ExportRequests, NotFound, PermissionDenied

from .conftest import AppData, request_api
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token
from .test_requests import OPERATIONS, call

# (policy, caller) -> may the caller use the owner's campaign?
ALLOWED = {
    ("role", "owner"): True,
    ("role", "other_manager"): True,
    ("role", "admin"): True,
    ("owner", "owner"): True,
    ("owner", "other_manager"): False,
    ("owner", "admin"): True,
}


class Campaigns:
    """A campaign created by one campaign manager, with a completed export in S3."""

    def __init__(self, data: AppData, s3_client):
        self.data = data
        self.owner = data.user("campaign_manager")
        self.campaign = data.campaign("Owned", created_by_user_id=self.owner)
        self.job = data.completed_export(self.campaign, self.owner, s3_client=s3_client)

    def caller(self, who: str) -> uuid.UUID:
        if who == "owner":
            return self.owner
        return self.data.user("admin" if who == "admin" else "campaign_manager")

    def snapshot(self) -> tuple:
        return self.data.count(schema.export_jobs), self.data.job_row(self.job)


@pytest.fixture
def owned(app_data, s3_client) -> Campaigns:
    return Campaigns(app_data, s3_client)


def requests_api(engine, s3_client, policy: str) -> ExportRequests:
    return request_api(engine, s3_client, EXPORT_ACCESS_POLICY=policy)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(("policy", "who"), list(ALLOWED))
def test_request_api_applies_the_policy(engine, s3_client, owned, policy, who, operation):
    api = requests_api(engine, s3_client, policy)
    user = owned.caller(who)
    if ALLOWED[policy, who]:
        result = call(api, operation, owned.campaign, owned.job, user)
        if operation == "list":
            assert [job.id for job in result] == [owned.job]
        else:
            assert result.campaign_id == owned.campaign
        return
    before = owned.snapshot()
    with pytest.raises(NotFound) as error:
        call(api, operation, owned.campaign, owned.job, user)
    # Word for word what an id that does not exist gets, so ids cannot be probed.
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as unknown:
        call(api, operation, missing, missing, user)
    assert str(error.value) == str(unknown.value).replace(
        str(missing), str(owned.job if operation in ("get", "refresh") else owned.campaign)
    )
    assert owned.snapshot() == before


def test_owner_policy_messages_say_not_found_or_not_yours(engine, s3_client, owned):
    api = requests_api(engine, s3_client, "owner")
    stranger = owned.caller("other_manager")
    with pytest.raises(NotFound) as error:
        api.get_export(owned.job, stranger)
    assert str(error.value) == (
        f"export job {owned.job} does not exist or is not of one of your campaigns"
    )
    with pytest.raises(NotFound) as error:
        api.list_exports(owned.campaign, stranger)
    assert str(error.value) == (
        f"campaign {owned.campaign} does not exist or is not one of your campaigns"
    )


def test_owner_policy_keeps_viewers_permission_error(engine, s3_client, owned, app_data):
    api = requests_api(engine, s3_client, "owner")
    viewer = app_data.user("viewer")
    with pytest.raises(PermissionDenied, match="has role viewer"):
        api.get_export(owned.job, viewer)


def test_campaign_without_a_creator_is_only_for_admins_under_owner(engine, s3_client, app_data):
    api = requests_api(engine, s3_client, "owner")
    campaign = app_data.campaign()  # created_by_user_id is NULL
    with pytest.raises(NotFound):
        api.list_exports(campaign, app_data.user("campaign_manager"))
    assert api.list_exports(campaign, app_data.user("admin")) == []


def test_unknown_policy_is_refused(engine, s3_client):
    with pytest.raises(ValueError, match="'owners'"):
        requests_api(engine, s3_client, "owners")


# Through HTTP: the same matrix, with 404 for what the policy hides.


@pytest.fixture
def http_owned(postgres_url, s3_client) -> Campaigns:
    return Campaigns(AppData(get_engine(postgres_url)), s3_client)


def http_client(postgres_url, s3_client, policy: str) -> TestClient:
    api = requests_api(get_engine(postgres_url), s3_client, policy)
    return TestClient(
        create_app(api, TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET)))
    )


def http_call(client: TestClient, operation: str, campaign, job, user_id, data: AppData):
    headers = {"Authorization": f"Bearer {token(oidc_subject(data, user_id))}"}
    method, path = {
        "request": ("POST", f"/api/campaigns/{campaign}/export"),
        "list": ("GET", f"/api/campaigns/{campaign}/exports"),
        "get": ("GET", f"/api/exports/{job}"),
        "refresh": ("POST", f"/api/exports/{job}/refresh-url"),
    }[operation]
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(("policy", "who"), list(ALLOWED))
def test_http_applies_the_policy(postgres_url, s3_client, http_owned, policy, who, operation):
    client = http_client(postgres_url, s3_client, policy)
    user = http_owned.caller(who)
    before = http_owned.snapshot()
    response = http_call(
        client, operation, http_owned.campaign, http_owned.job, user, http_owned.data
    )
    if ALLOWED[policy, who]:
        assert response.status_code == (202 if operation == "request" else 200), response.text
        return
    assert response.status_code == 404, response.text
    assert "does not exist or is not" in response.json()["detail"]
    missing = uuid.uuid4()
    unknown = http_call(client, operation, missing, missing, user, http_owned.data)
    assert unknown.status_code == 404
    assert response.json()["detail"] == unknown.json()["detail"].replace(
        str(missing),
        str(http_owned.job if operation in ("get", "refresh") else http_owned.campaign),
    )
    assert http_owned.snapshot() == before


def test_http_owner_policy_keeps_403_for_viewers(postgres_url, s3_client, http_owned):
    client = http_client(postgres_url, s3_client, "owner")
    viewer = http_owned.data.user("viewer")
    response = http_call(
        client, "get", http_owned.campaign, http_owned.job, viewer, http_owned.data
    )
    assert response.status_code == 403
