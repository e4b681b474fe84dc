"""schemathesis against the OpenAPI document: no generated request makes the API fail
with a server error, with a campaign manager's token and without one."""

import pytest
import schemathesis
from hypothesis import HealthCheck, find, settings
from hypothesis.errors import NoSuchExample

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.service.http.app import create_app
from voicesurvey_exports.service.http.auth import AuthSettings, TokenVerifier

from .conftest import AppData, request_api
from .test_http_api import AUDIENCE, ISSUER, SECRET, oidc_subject, token


@pytest.fixture
def served(postgres_url, s3_client):
    data = AppData(get_engine(postgres_url))
    manager = data.user("campaign_manager")
    data.campaign()
    api = request_api(get_engine(postgres_url), s3_client)
    app = create_app(api, TokenVerifier(AuthSettings(ISSUER, AUDIENCE, jwt_secret=SECRET)))
    return app, token(oidc_subject(data, manager))


def fuzz(operation, bearer: str) -> None:
    """Search the operation's generated requests for one that gets a 5xx."""

    def server_error(case) -> bool:
        return any(
            case.call(headers=headers).status_code >= 500
            for headers in ({"Authorization": f"Bearer {bearer}"}, {})
        )

    try:
        failing = find(
            operation.as_strategy(),
            server_error,
            settings=settings(
                max_examples=40,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    except NoSuchExample:
        return
    raise AssertionError(f"{operation.label} answered 5xx to {failing.as_curl_command()}")


def test_no_generated_request_causes_a_server_error(served):
    app, bearer = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:
        fuzz(operation, bearer)
