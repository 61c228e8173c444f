from __future__ import annotations

import logging
import shutil

import pytest
from api_support import Keys
from fastapi.testclient import TestClient

from service.settings import Settings


def test_healthz_and_readyz(client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    shutil.rmtree(settings.broker_dir)
    with caplog.at_level(logging.WARNING):
        r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert str(settings.broker_dir) not in r.text and str(settings.broker_dir) in caplog.text
    assert r.json()["detail"] == "not ready: broker unreachable; the service log has the reason"


def test_readyz_names_a_missing_storage_folder(
    client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.storage_dir.rename(settings.data_dir / "moved")
    with caplog.at_level(logging.WARNING):
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["code"] == "not-ready"
    assert r.json()["detail"] == "not ready: storage unreachable; the service log has the reason"
    assert str(settings.storage_dir) not in r.text and str(settings.storage_dir) in caplog.text
    (settings.data_dir / "moved").rename(settings.storage_dir)
    assert client.get("/readyz").status_code == 200


def test_prometheus_metrics(client: TestClient, keys: Keys, settings: Settings) -> None:
    client.app.state.settings = settings.model_copy(update={"metrics_token": "t"})
    for _ in range(3):
        client.get("/v1/jobs/job_abc", headers=keys.a)
    client.get("/v1/jobs", headers=keys.a)
    text = client.get("/metrics", headers={"Authorization": "Bearer t"}).text
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
