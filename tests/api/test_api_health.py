from __future__ import annotations

import shutil

from api_support import Keys
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings


def test_healthz_and_readyz(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["database"] == "ok" and r.json()["broker"] == "ok"
    shutil.rmtree(settings.broker_dir)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert "broker" in r.json()["detail"]


def test_readyz_reports_unreachable_services(tmp_path) -> None:  # noqa: ANN001
    bad = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1",
        broker_url="redis://127.0.0.1:1/0",
    )
    with TestClient(create_app(bad)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert any(c.startswith("database") for c in checks) and any(c.startswith("broker") for c in checks)


def test_prometheus_metrics(client: TestClient, keys: Keys) -> None:
    for _ in range(3):
        client.get("/v1/jobs/job_abc", headers=keys.a)
    client.get("/v1/jobs", headers=keys.a)
    text = client.get("/metrics").text
    assert 'ruc_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 3' in text
    assert 'ruc_http_requests_total{method="GET",route="/v1/jobs",status="200"} 1' in text
    assert 'ruc_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"} 3' in text
    assert 'ruc_jobs{status="queued"} 0' in text and "ruc_database_up 1" in text


def test_openapi_documents_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/jobs"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert {"minimal", "scan_checkpoint"} <= set(examples)
    assert "application/problem+json" in post["responses"]["422"]["content"]
    upload = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file"]
