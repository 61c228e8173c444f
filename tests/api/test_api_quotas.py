"""Per-API-key quotas: queued+running jobs, uploads per hour, stored bytes. Over one is a 429 with
Retry-After whose detail names the limit; the other key is unaffected."""

from __future__ import annotations

import pytest
from api_support import Keys, npz_bytes, ready_dataset, submit
from fastapi.testclient import TestClient

from service.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    upload = len(npz_bytes())
    return settings.model_copy(
        update={
            "quota_active_jobs": 2,
            "quota_uploads_per_hour": 3,
            "quota_stored_bytes": 2 * upload + upload // 2,
        }
    )


def _assert_quota(r, limit_name: str) -> int:  # noqa: ANN001
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "quota-exceeded" and body["limit"] == limit_name and limit_name in body["detail"]
    retry_after = int(r.headers["Retry-After"])
    assert retry_after >= 1 and body["retry_after_seconds"] == retry_after
    return retry_after


def test_active_jobs_quota(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    ids = []
    for i in range(2):
        r = submit(client, keys.a, ds, seed=i)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    _assert_quota(submit(client, keys.a, ds, seed=9), "RUC_QUOTA_ACTIVE_JOBS")
    assert len(client.get("/v1/jobs", headers=keys.a).json()["data"]) == 2
    # The other key has its own quota.
    ds_b = ready_dataset(client, settings, keys.b)
    assert submit(client, keys.b, ds_b).status_code == 202
    # A replay of a submit already made is not a new job: never refused by the quota.
    again = client.post(
        "/v1/jobs", headers={**keys.a, "Idempotency-Key": "k1"}, json={"dataset_id": ds, "num_clusters": 2}
    )
    assert again.status_code == 429  # a new key at the limit is refused ...
    assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=keys.a).json()["status"] == "cancelled"
    assert submit(client, keys.a, ds, seed=9).status_code == 202  # ... and a finished job frees a slot


def test_storage_quota_stops_the_stream(client: TestClient, keys: Keys, settings: Settings) -> None:
    files = {"file": ("d.npz", npz_bytes())}
    for _ in range(2):
        assert client.post("/v1/datasets", headers=keys.a, files=files).status_code == 201
    # A third file would pass the stored-bytes quota (2.5 files): refused while streaming, nothing kept.
    _assert_quota(client.post("/v1/datasets", headers=keys.a, files=files), "RUC_QUOTA_STORED_BYTES")
    assert len(list((settings.storage_dir / "datasets").iterdir())) == 2
    assert client.post("/v1/datasets", headers=keys.b, files=files).status_code == 201
    # Deleting one makes room again.
    first = client.get("/v1/datasets", headers=keys.a).json()["data"][0]["id"]
    assert client.delete(f"/v1/datasets/{first}", headers=keys.a).status_code == 204
    assert (
        client.post("/v1/checkpoints", headers=keys.a, files={"file": ("m.pt", b"x" * 100)}).status_code
        == 201
    )


def test_upload_rate_quota(client: TestClient, keys: Keys, settings: Settings) -> None:
    client.app.state.settings = settings.model_copy(update={"quota_stored_bytes": 0})
    files = {"file": ("d.npz", npz_bytes())}
    for route in ("/v1/datasets", "/v1/checkpoints", "/v1/datasets"):
        name = "m.pt" if route == "/v1/checkpoints" else "d.npz"
        assert client.post(route, headers=keys.a, files={"file": (name, npz_bytes())}).status_code == 201
    retry_after = _assert_quota(
        client.post("/v1/datasets", headers=keys.a, files=files), "RUC_QUOTA_UPLOADS_PER_HOUR"
    )
    assert 3500 < retry_after <= 3600  # the oldest counted upload ages out of the hour
    assert client.post("/v1/datasets", headers=keys.b, files=files).status_code == 201
