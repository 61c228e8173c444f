from __future__ import annotations

from api_support import Keys, ready_dataset, submit, upload
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.auth import key_cache
from service.db.models import ApiKey, utcnow
from service.db.session import session_scope
from service.settings import Settings

PROBLEM = "application/problem+json"


def test_every_v1_route_needs_a_key(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/job_x"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/datasets"),
        ("POST", "/v1/datasets"),
        ("GET", "/v1/checkpoints/ck_x"),
        ("GET", "/v1/jobs/job_x/artifacts/result.json"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["status"] == 401
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_bad_keys_are_401(client: TestClient, keys: Keys) -> None:
    for header in [
        "Bearer nope",
        "Basic abc",
        "Bearer",
        "bearer  ",
        keys.a["Authorization"].replace("Bearer ", ""),
    ]:
        r = client.get("/v1/jobs", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["content-type"] == PROBLEM
    assert client.get("/v1/jobs", headers=keys.a).status_code == 200


def test_revoked_key_is_401_once_the_cache_lapses(client: TestClient, keys: Keys, settings: Settings) -> None:
    assert client.get("/v1/jobs", headers=keys.a).status_code == 200
    with session_scope(settings.database_url) as s:
        s.execute(update(ApiKey).where(ApiKey.id == keys.a_owner).values(revoked_at=utcnow()))
    key_cache.clear()  # stands in for api_key_cache_seconds passing
    assert client.get("/v1/jobs", headers=keys.a).status_code == 401


def test_other_owner_sees_404_never_the_rows(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds_id = ready_dataset(client, settings, keys.a)
    job = submit(client, keys.a, ds_id).json()
    ck = upload(client, keys.a, name="m.pt", data=b"x" * 10, route="/v1/checkpoints")
    for path in [
        f"/v1/datasets/{ds_id}",
        f"/v1/checkpoints/{ck['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/metrics",
        f"/v1/jobs/{job['id']}/result",
        f"/v1/jobs/{job['id']}/artifacts",
    ]:
        r = client.get(path, headers=keys.b)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == PROBLEM
        assert client.get(path, headers=keys.a).status_code in (200, 409), path
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=keys.b).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=keys.b).status_code == 404
    assert client.delete(f"/v1/datasets/{ds_id}", headers=keys.b).status_code == 404
    # B cannot start a job on A's dataset either: it does not exist for B.
    r = submit(client, keys.b, ds_id)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset_id"
    assert client.get("/v1/jobs", headers=keys.b).json()["data"] == []
    assert client.get("/v1/datasets", headers=keys.b).json()["data"] == []
    assert len(client.get("/v1/jobs", headers=keys.a).json()["data"]) == 1
