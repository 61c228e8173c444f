"""A submit refused with a 503 because the broker is down is retried with the same Idempotency-Key
once the broker is back: the retry enqueues the job, it does not hand back a dead one."""

from __future__ import annotations

from api_support import Keys, broker_tasks, ready_dataset
from fastapi.testclient import TestClient

from api.auth import key_cache
from api.main import create_app
from service.settings import Settings
from service.task_names import GPU_QUEUE, TASK_RUN_JOB

CLOSED_PORT_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


def test_retry_after_broker_outage_enqueues_the_same_job(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    ds = ready_dataset(client, settings, keys.a)
    spec = {"dataset_id": ds, "num_clusters": 2}
    headers = {**keys.a, "Idempotency-Key": "outage-1"}

    down = settings.model_copy(update={"broker_url": CLOSED_PORT_BROKER})
    key_cache.clear()
    with TestClient(create_app(down), raise_server_exceptions=False) as broken:
        r = broken.post("/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "broker-unavailable"
    # The client learns what to do, not the broker's address.
    assert "127.0.0.1" not in r.text and ":1" not in body["detail"] and "Idempotency-Key" in body["detail"]

    r = client.post("/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["error"] is None and job["error_code"] is None
    assert broker_tasks(settings, GPU_QUEUE) == [(TASK_RUN_JOB, [job["id"]])]
    # A further replay is a plain replay: same job, no second message.
    again = client.post("/v1/jobs", json=spec, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(broker_tasks(settings, GPU_QUEUE)) == 1
    assert len(client.get("/v1/jobs", headers=keys.a).json()["data"]) == 1
