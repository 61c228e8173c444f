"""No exception text reaches a client: stable messages and codes in responses, the detail in logs."""

from __future__ import annotations

import logging

import pytest
from api_support import Keys, ready_dataset, submit
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.auth import key_cache
from api.main import create_app
from service.db.models import Dataset, Job
from service.db.session import session_scope
from service.settings import Settings

INTERNALS = ("127.0.0.1", "psycopg", "refused", "Error 111", "OperationalError", "Traceback", "/tmp/")


def _assert_clean(text: str) -> None:
    leaked = [s for s in INTERNALS if s in text]
    assert not leaked, (leaked, text[:400])


def test_readyz_says_only_not_ready_and_logs_why(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    bad = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1",
        broker_url="redis://127.0.0.1:1/0",
    )
    with caplog.at_level(logging.WARNING), TestClient(create_app(bad), raise_server_exceptions=False) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["code"] == "not-ready" and "checks" not in r.json()
        _assert_clean(r.text)
        # A /v1 request with the key store down: a 503 that names no host.
        v1 = c.get("/v1/jobs", headers={"Authorization": "Bearer ruc_x"})
        assert v1.status_code == 503 and v1.json()["code"] == "unavailable"
        _assert_clean(v1.text)
    logged = caplog.text
    assert "database" in logged and "broker" in logged and "127.0.0.1" in logged


def test_metrics_hide_job_counts_unless_the_token_is_sent(client: TestClient, settings: Settings) -> None:
    text = client.get("/metrics").text
    assert "ruc_http_requests_total" in text and "ruc_jobs{" not in text
    key_cache.clear()
    guarded = settings.model_copy(update={"metrics_token": "m-token"})
    with TestClient(create_app(guarded), raise_server_exceptions=False) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.get("/metrics", headers={"Authorization": "Bearer m-token"})
        assert r.status_code == 200 and 'ruc_jobs{status="queued"} 0' in r.text


def test_job_errors_are_codes_and_client_messages(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    job_id = submit(client, keys.a, ds).json()["id"]
    cases = [
        # What the worker wrote before stable errors: the exception's own text.
        (
            'OperationalError: (psycopg.OperationalError) connection to server at "db.internal" '
            "(10.0.0.5), port 5432 failed; [SQL: UPDATE jobs SET ...] /srv/ruc/worker/job_runner.py",
            "internal_error",
            "the job failed on an internal error; the operator's logs have the detail",
        ),
        (
            "invalid_input: images: must be uint8 (N, H, W, C)",
            "invalid_input",
            "images: must be uint8 (N, H, W, C)",
        ),
        ("worker lost 3 times (max_attempts=3)", "worker_lost", "worker lost 3 times (max_attempts=3)"),
        (
            "time_limit_exceeded: time limit of 60 s exceeded",
            "time_limit_exceeded",
            "time limit of 60 s exceeded",
        ),
    ]
    for stored, code, message in cases:
        with session_scope(settings.database_url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="failed", error=stored))
        for body in (
            client.get(f"/v1/jobs/{job_id}", headers=keys.a).json(),
            client.get("/v1/jobs", headers=keys.a).json()["data"][0],
        ):
            assert (body["error_code"], body["error"]) == (code, message), body
            assert "db.internal" not in str(body) and "SQL" not in str(body)


def test_upload_refused_by_a_down_broker_names_no_host(settings: Settings, keys: Keys) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    key_cache.clear()
    with TestClient(create_app(down), raise_server_exceptions=False) as c:
        r = c.post("/v1/datasets", headers=keys.a, files={"file": ("d.npz", b"x" * 10)})
    assert r.status_code == 503 and r.json()["code"] == "broker-unavailable"
    _assert_clean(r.text)


def test_unreadable_upload_reason_hides_the_readers_text(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    ds = client.post("/v1/datasets", headers=keys.a, files={"file": ("d.npz", b"x" * 10)}).json()["id"]
    raw = "could not read file: FileNotFoundError: [Errno 2] No such file: '/srv/ruc/storage/ds/data.npz'"
    with session_scope(settings.database_url) as s:
        s.execute(update(Dataset).where(Dataset.id == ds).values(status="invalid", reason=raw))
    for body in (
        client.get(f"/v1/datasets/{ds}", headers=keys.a).json(),
        client.get("/v1/datasets", headers=keys.a).json()["data"][0],
        submit(client, keys.a, ds).json(),
    ):
        assert "/srv/" not in str(body) and "could not read file" in str(body), body
    # core's named defects stay as they are: they tell the client what to fix.
    with session_scope(settings.database_url) as s:
        s.execute(update(Dataset).where(Dataset.id == ds).values(reason="images: must be uint8"))
    assert client.get(f"/v1/datasets/{ds}", headers=keys.a).json()["reason"] == "images: must be uint8"
