"""HTTP edges that tests/reliability (schema fuzz, concurrent submits) also reach, checked in-process:
the Allow header of a 405, JSON bodies json.loads cannot read, error responses declared as the
problem+json they are, the event stream's cursor declared as what it accepts, and a replayed submit
that gives its connection back."""

from __future__ import annotations

from api_support import Keys, ready_dataset
from fastapi.testclient import TestClient

from api.services.jobs import submit_job
from core.spec import JobSpec
from service.db.session import get_sessionmaker
from service.settings import Settings

PROBLEM = "application/problem+json"


def test_a_405_lists_every_method_of_the_path(client: TestClient, keys: Keys) -> None:
    # Starlette's own 405 names only the first route whose path matched (`Allow: POST` for /v1/jobs).
    expected = {"/v1/jobs": "GET, POST", "/v1/jobs/job_x": "GET, DELETE", "/v1/jobs/job_x/cancel": "POST"}
    for path, allow in expected.items():
        r = client.request("PUT", path, headers=keys.a)
        assert (r.status_code, r.headers["allow"], r.headers["content-type"]) == (405, allow, PROBLEM), path


def test_a_body_json_cannot_decode_is_a_422_naming_body(client: TestClient, keys: Keys) -> None:
    headers = {**keys.a, "Content-Type": "application/json"}
    for content, reason in ((b'{"a": "\xff"}', "not UTF-8 text"), (b"[" * 50_000, "nested too deeply")):
        r = client.post("/v1/jobs", content=content, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["errors"] == [{"field": "body", "problem": f"body is not valid JSON: {reason}"}]


def test_error_responses_are_declared_as_problem_json(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    declared = {
        (path, method, status): response.get("content")
        for path, item in doc["paths"].items()
        for method, op in item.items()
        for status, response in op["responses"].items()
        if status[0] in "45"
    }
    problem = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert len(declared) > 60
    assert {key: content for key, content in declared.items() if content != problem} == {}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path in ("/v1/jobs", "/v1/datasets", "/v1/checkpoints"):
        assert "429" in doc["paths"][path]["post"]["responses"], path  # the quotas


def test_stream_cursor_is_declared_and_checked(client: TestClient, keys: Keys) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events/stream"]["get"]
    schemas = {p["name"]: p["schema"] for p in op["parameters"] if p["name"] != "job_id"}
    pattern = r"^(([0-9]{1,18})-([0-9]{1,18})-([0-9a-f]{1,16}))?$"
    # Plain strings: from `anyOf [string, null]` a generated client may send the header as "null".
    assert {name: (s["type"], s["pattern"]) for name, s in schemas.items()} == {
        "after": ("string", pattern),
        "Last-Event-ID": ("string", pattern),
    }
    r = client.get("/v1/jobs/job_x/events/stream", headers={**keys.a, "Last-Event-ID": "null"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Last-Event-ID"
    assert client.get("/v1/jobs/job_x/events/stream?after=", headers=keys.a).status_code == 404


def test_a_replayed_submit_ends_its_transaction(client: TestClient, keys: Keys, settings: Settings) -> None:
    # An open transaction keeps its connection while FastAPI waits for a thread to validate the
    # response; enough concurrent replays then deadlock the pool (test_concurrent_submits.py).
    spec = JobSpec(dataset_id=ready_dataset(client, settings, keys.a), num_clusters=2)
    session = get_sessionmaker(settings.database_url)()
    try:
        first = submit_job(session, settings, keys.a_owner, spec, "replay-1")
        again = submit_job(session, settings, keys.a_owner, spec, "replay-1")
        assert (first.replayed, again.replayed, again.job.id) == (False, True, first.job.id)
        assert not session.in_transaction()
    finally:
        session.close()
