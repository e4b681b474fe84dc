"""The conventions an app team integrates against without asking (docs/http-api.md):
problem details with a code per cause, 202 headers, no-store, Allow, pages."""

import importlib.metadata
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.service.http.app import openapi_document
from voicesurvey_exports.service.http.deps import export_requests
from voicesurvey_exports.service.http.problems import PROBLEMS
from voicesurvey_exports.service.requests import ExportRequests, RateLimited

from .conftest import TEST_BUCKET, AppData, request_api
from .test_http_api import service, token, user_with_token


@pytest.fixture
def app_data(postgres_url):
    return AppData(get_engine(postgres_url))


@pytest.fixture
def client(postgres_url, s3_client) -> TestClient:
    return service(get_engine(postgres_url), s3_client)


def assert_problem(response, code: str) -> dict:
    assert response.status_code == PROBLEMS[code].status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["type"] == f"https://voicesurvey.example/problems/{code}"
    assert (body["status"], body["title"]) == (PROBLEMS[code].status, PROBLEMS[code].title)
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_each_refusal_is_problem_details_with_its_own_code(client, app_data, s3_client):
    campaign = app_data.campaign()
    _, manager = user_with_token(app_data, "campaign_manager")
    _, viewer = user_with_token(app_data, "viewer")
    completed = app_data.completed_export(campaign, s3_client=s3_client, total_records=1)
    pending = app_data.export_job(campaign, app_data.user())
    gone = app_data.completed_export(campaign, s3_client=s3_client, total_records=1)
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=app_data.job_row(gone)["s3_key"])
    export = f"/api/campaigns/{campaign}/export"

    answers = {
        "unauthenticated": client.get(f"/api/exports/{completed}"),
        "invalid_token": client.get(
            f"/api/exports/{completed}", headers={"Authorization": "Bearer not.a.jwt"}
        ),
        "unknown_user": client.get(
            f"/api/exports/{completed}", headers={"Authorization": f"Bearer {token('nobody')}"}
        ),
        "forbidden": client.get(f"/api/exports/{completed}", headers=viewer),
        "not_found": client.get(f"/api/exports/{uuid.uuid4()}", headers=manager),
        "method_not_allowed": client.delete(f"/api/exports/{completed}", headers=manager),
        "export_not_completed": client.post(f"/api/exports/{pending}/refresh-url", headers=manager),
        "file_gone": client.post(f"/api/exports/{gone}/refresh-url", headers=manager),
        "already_ended": client.post(f"/api/exports/{completed}/cancel", headers=manager),
        "validation_failed": client.post(export, headers=manager, json={"compression": "zip"}),
        "payload_too_large": client.post(export, headers=manager, content=b" " * 70_000),
    }
    for code, response in answers.items():
        assert_problem(response, code)
    assert answers["unauthenticated"].headers["WWW-Authenticate"] == "Bearer"
    assert answers["invalid_token"].headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "pending" in answers["export_not_completed"].json()["detail"]
    [error] = answers["validation_failed"].json()["errors"]
    assert (error["loc"], error["type"]) == (["body", "compression"], "literal_error")
    assert answers["validation_failed"].json()["detail"].startswith("body.compression: ")
    assert app_data.count(export_jobs) == 3


def test_an_unknown_path_and_an_outage_are_problems_too(s3_client, client):
    assert_problem(client.get("/api/nothing-here"), "not_found")
    down = service(get_engine("postgresql://nobody@127.0.0.1:1/none"), s3_client)
    answer = down.get(
        f"/api/exports/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token('someone')}"}
    )
    assert assert_problem(answer, "unavailable")["detail"].startswith(
        "the app database is unavailable: "
    )


def test_a_rate_limited_request_is_429_with_retry_after(client, app_data, postgres_url, s3_client):
    class Limited(ExportRequests):
        def request_export_once(self, *args, **options):
            raise RateLimited("user x started 10 exports in the last minute", 17)

    api = request_api(get_engine(postgres_url), s3_client)
    client.app.dependency_overrides[export_requests] = lambda: Limited(
        api.engine, api.objects, api.access_policy
    )
    _, headers = user_with_token(app_data, "campaign_manager")
    answer = client.post(f"/api/campaigns/{app_data.campaign()}/export", headers=headers)
    assert assert_problem(answer, "rate_limited")["detail"] == (
        "user x started 10 exports in the last minute"
    )
    assert answer.headers["Retry-After"] == "17"


def test_an_undecodable_body_is_422_like_any_malformed_input(client, app_data):
    _, headers = user_with_token(app_data, "campaign_manager")
    answer = client.post(
        f"/api/campaigns/{app_data.campaign()}/export",
        headers={**headers, "Content-Type": "application/json"},
        content=b'{"compression": "gzip\xff"}',
    )
    assert assert_problem(answer, "validation_failed")["errors"][0]["loc"] == ["body"]
    assert app_data.count(export_jobs) == 0


def test_202_says_where_the_job_is_and_when_to_poll_it(client, app_data):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    first = client.post(f"/api/campaigns/{campaign}/export", headers=headers)
    second = client.get(f"/api/campaigns/{campaign}/export", headers=headers)
    for answer in (first, second):
        assert answer.status_code == 202
        assert answer.headers["Location"] == f"/api/exports/{answer.json()['job_id']}"
        assert client.get(answer.headers["Location"], headers=headers).status_code == 200
    # One export ahead in the queue: 3 s more than the first.
    assert (first.headers["Retry-After"], second.headers["Retry-After"]) == ("2", "5")
    cancelled = client.post(f"{first.headers['Location']}/cancel", headers=headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.headers["Location"] == first.headers["Location"]
    assert cancelled.headers["Retry-After"] == "0"


def test_every_answer_that_can_carry_a_link_is_no_store(client, app_data, s3_client):
    campaign = app_data.campaign()
    job = app_data.completed_export(campaign, s3_client=s3_client, total_records=1)
    _, headers = user_with_token(app_data, "admin")
    for method, path in (
        ("GET", f"/api/exports/{job}"),
        ("GET", f"/api/campaigns/{campaign}/exports"),
        ("POST", f"/api/exports/{job}/refresh-url"),
        ("POST", f"/api/campaigns/{campaign}/export"),
    ):
        answer = client.request(method, path, headers=headers)
        assert answer.status_code < 300, (path, answer.text)
        assert answer.headers["Cache-Control"] == "no-store", path


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/campaigns/{id}/export", "GET, POST, OPTIONS"),
        ("/api/campaigns/{id}/exports", "GET, OPTIONS"),
        ("/api/exports/{id}", "GET, OPTIONS"),
        ("/api/exports/{id}/refresh-url", "POST, OPTIONS"),
        ("/api/exports/{id}/cancel", "POST, OPTIONS"),
    ],
)
def test_options_and_405_name_every_method_of_the_path(client, path, allowed):
    path = path.format(id=uuid.uuid4())
    answer = client.options(path)
    assert (answer.status_code, answer.headers["Allow"]) == (204, allowed)
    refused = client.put(path)
    assert_problem(refused, "method_not_allowed")
    assert refused.headers["Allow"] == allowed


def test_the_list_comes_in_pages_newest_first_linked_by_an_opaque_cursor(client, app_data):
    campaign = app_data.campaign()
    jobs = [app_data.export_job(campaign, app_data.user()) for _ in range(5)]
    _, headers = user_with_token(app_data, "campaign_manager")
    everything = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
    assert "Link" not in everything.headers
    newest_first = [job["job_id"] for job in everything.json()]
    assert sorted(newest_first) == sorted(str(job) for job in jobs)

    pages, url = [], f"/api/campaigns/{campaign}/exports?limit=2"
    while url:
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200 and isinstance(answer.json(), list)
        pages.append([job["job_id"] for job in answer.json()])
        link = answer.headers.get("Link")
        url = link.split(">")[0].removeprefix("<") if link else None
        if link:
            assert link.endswith('>; rel="next"') and "limit=2" in link and "cursor=" in link
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sum(pages, []) == newest_first


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=ten",
        "limit=2&limit=3",
        "cursor=not-a-cursor",
        "cursor=" + "QQ",
    ],
)
def test_a_bad_page_size_or_a_tampered_cursor_is_422(client, app_data, query):
    _, headers = user_with_token(app_data, "campaign_manager")
    answer = client.get(f"/api/campaigns/{app_data.campaign()}/exports?{query}", headers=headers)
    body = assert_problem(answer, "validation_failed")
    assert body["errors"][0]["loc"][-1] in ("limit", "cursor")


def test_at_most_200_jobs_a_page_and_50_by_default(client, app_data):
    campaign = app_data.campaign()
    user = app_data.user()
    for _ in range(201):
        app_data.export_job(campaign, user)
    _, headers = user_with_token(app_data, "campaign_manager")
    default = client.get(f"/api/campaigns/{campaign}/exports", headers=headers)
    largest = client.get(f"/api/campaigns/{campaign}/exports?limit=200", headers=headers)
    assert (len(default.json()), len(largest.json())) == (50, 200)
    assert 'rel="next"' in default.headers["Link"] and 'rel="next"' in largest.headers["Link"]


def test_the_same_idempotency_key_answers_the_first_job_again(client, app_data):
    campaign = app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    keyed = {**headers, "Idempotency-Key": "order-4711 retry"}
    export = f"/api/campaigns/{campaign}/export"

    first = client.post(export, headers=keyed, json={"compression": "gzip"})
    again = client.post(export, headers=keyed, json={"compression": "gzip"})
    via_get = client.get(f"{export}?compression=gzip", headers=keyed)

    assert [a.status_code for a in (first, again, via_get)] == [202] * 3
    assert "Idempotent-Replayed" not in first.headers
    assert again.json() == first.json() == via_get.json()
    for replay in (again, via_get):
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.headers["Location"] == first.headers["Location"]
    assert app_data.count(export_jobs) == 1
    unkeyed = client.post(export, headers=headers, json={"compression": "gzip"})
    assert unkeyed.json()["job_id"] != first.json()["job_id"]


def test_the_same_key_for_another_request_is_409_and_records_nothing(client, app_data):
    campaign, other_campaign = app_data.campaign(), app_data.campaign()
    _, headers = user_with_token(app_data, "campaign_manager")
    keyed = {**headers, "Idempotency-Key": "k-1"}
    first = client.post(f"/api/campaigns/{campaign}/export", headers=keyed)
    for other in (
        client.post(f"/api/campaigns/{campaign}/export", headers=keyed, json={"bom": True}),
        client.get(f"/api/campaigns/{campaign}/export?compression=gzip", headers=keyed),
        client.post(f"/api/campaigns/{other_campaign}/export", headers=keyed),
    ):
        detail = assert_problem(other, "idempotency_key_reused")["detail"]
        assert "'k-1'" in detail and first.json()["job_id"] in detail
    assert app_data.count(export_jobs) == 1


def test_a_key_is_per_user_and_stands_for_24_hours(client, app_data):
    campaign = app_data.campaign()
    _, alice = user_with_token(app_data, "campaign_manager")
    _, bob = user_with_token(app_data, "campaign_manager")
    export = f"/api/campaigns/{campaign}/export"
    first = client.post(export, headers={**alice, "Idempotency-Key": "k"}).json()["job_id"]
    bobs = client.post(export, headers={**bob, "Idempotency-Key": "k"}).json()["job_id"]
    assert bobs != first
    with app_data.engine.begin() as conn:
        conn.execute(
            export_jobs.update()
            .where(export_jobs.c.id == uuid.UUID(first))
            .values(created_at=export_jobs.c.created_at - timedelta(hours=24, minutes=1))
        )
    # Its 24 hours are over: the key starts a new export, even with other options.
    later = client.post(export, headers={**alice, "Idempotency-Key": "k"}, json={"bom": True})
    assert later.status_code == 202 and later.json()["job_id"] not in (first, bobs)
    assert app_data.count(export_jobs) == 3


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"caf\xc3\xa9", b"tab\there", b"\x7f"], ids=str)
def test_a_malformed_idempotency_key_is_422_naming_the_header(client, app_data, key):
    _, headers = user_with_token(app_data, "campaign_manager")
    answer = client.post(
        f"/api/campaigns/{app_data.campaign()}/export",
        headers=[*headers.items(), ("Idempotency-Key", key)],
    )
    [error] = assert_problem(answer, "validation_failed")["errors"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert app_data.count(export_jobs) == 0


def test_concurrent_requests_with_one_key_record_one_job(postgres_url, s3_client, app_data):
    api = request_api(get_engine(postgres_url), s3_client)
    campaign, user = app_data.campaign(), app_data.user("campaign_manager")
    start = threading.Barrier(8)

    def request(_):
        start.wait()
        return api.request_export_once(campaign, user, idempotency_key="double-click")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(request, range(8)))
    assert len({job.id for job, _ in answers}) == 1
    assert sorted(replayed for _, replayed in answers) == [False] + [True] * 7
    assert app_data.count(export_jobs) == 1


def test_openapi_names_each_operation_its_version_headers_and_problem_codes():
    document = openapi_document()
    assert document["info"]["version"] == importlib.metadata.version("voicesurvey-exports")
    operations = {
        operation["operationId"]: operation
        for path in document["paths"].values()
        for operation in path.values()
    }
    assert set(operations) == {
        "createExport",
        "createExportViaGet",
        "listExports",
        "getExport",
        "refreshExportUrl",
        "cancelExport",
        "createExportSchedule",
        "listExportSchedules",
        "getExportSchedule",
        "deleteExportSchedule",
    }
    described = json.dumps(document)
    for code in set(PROBLEMS) - {"internal_error", "method_not_allowed"}:
        assert f"`{code}`" in described, code
    for answer in (operations["createExport"], operations["cancelExport"]):
        assert {"Location", "Retry-After"} <= set(answer["responses"]["202"]["headers"])
    assert "Link" in operations["listExports"]["responses"]["200"]["headers"]
    assert "Idempotency-Key" in [p["name"] for p in operations["createExport"]["parameters"]]
    for operation in operations.values():
        for status, answer in operation["responses"].items():
            if status >= "400":
                assert list(answer["content"]) == ["application/problem+json"]


def test_the_docs_list_every_problem_code_with_its_status():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "http-api.md").read_text()
    for code, kind in PROBLEMS.items():
        assert f"| {kind.status} | `{code}` |" in docs, code
