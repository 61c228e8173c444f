from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from api_support import Keys, broker_tasks, mark_ready, ready_dataset, submit, upload
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from service.db.models import Artifact, Checkpoint, Job, JobEvent, JobMetric, utcnow
from service.db.session import session_scope
from service.settings import Settings

RESULT_EXAMPLE = json.loads((Path(__file__).parent / "result_example.json").read_text())

PROBLEM = "application/problem+json"


def _set_job(settings: Settings, job_id: str, **values: object) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _job_count(settings: Settings) -> int:
    with session_scope(settings.database_url) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_submit_returns_202_location_and_enqueues(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    r = submit(client, keys.a, ds, refine={"epochs": 7, "lr": 0.05})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == 0.0
    assert job["total_epochs"] == 7 and job["max_attempts"] == settings.max_attempts
    assert job["spec"]["refine"]["lr"] == 0.05 and job["spec"]["refine"]["momentum"] == 0.9  # defaults filled
    assert broker_tasks(settings, "gpu") == [("jobs.run", [job["id"]])]
    got = client.get(f"/v1/jobs/{job['id']}", headers=keys.a).json()
    assert got["id"] == job["id"] and got["created_at"].endswith("Z")
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=keys.a).json()
    assert [e["message"] for e in events["data"]] == ["job queued"]


def test_invalid_spec_fields_are_named(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    cases = [
        ({"refine": {"lr": -1}}, "refine.lr"),
        ({"refine": {"lr": 0.1, "bogus": 1}}, "refine.bogus"),
        ({"unknown_top": True}, "unknown_top"),
        ({"num_clusters": 1}, "num_clusters"),
        ({"evaluate": {"attacks": [{"kind": "fgsm", "eps": [2.0]}]}}, "evaluate.attacks.0.eps"),
        ({"base": {"method": "checkpoint"}}, "base"),
        ({"callback_url": "not a url"}, "callback_url"),
    ]
    for extra, field in cases:
        r = submit(client, keys.a, ds, **extra)
        assert r.status_code == 422, (extra, r.text)
        assert r.headers["content-type"] == PROBLEM
        fields = [e["field"] for e in r.json()["errors"]]
        assert field in fields, (extra, fields)
    assert _job_count(settings) == 0
    assert broker_tasks(settings, "gpu") == []


def test_dataset_reference_checks(client: TestClient, keys: Keys, settings: Settings) -> None:
    r = submit(client, keys.a, "ds_doesnotexist")
    assert r.status_code == 422 and r.json()["errors"] == [
        {"field": "dataset_id", "problem": "no dataset 'ds_doesnotexist'"}
    ]
    pending = upload(client, keys.a)["id"]
    r = submit(client, keys.a, pending)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "dataset_id"
    ds = ready_dataset(client, settings, keys.a)  # 6 images
    r = client.post("/v1/jobs", headers=keys.a, json={"dataset_id": ds, "num_clusters": 7})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "num_clusters"
    r = submit(client, keys.a, ds, base={"method": "labels"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "base.method"
    assert _job_count(settings) == 0


def test_checkpoint_reference_checks(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    emb = upload(client, keys.a, name="simclr.pth", data=b"0" * 10, route="/v1/checkpoints")["id"]
    field = "base.embedding_checkpoint_id"
    r = submit(client, keys.a, ds, base={"embedding_checkpoint_id": "ck_missing"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == field
    r = submit(client, keys.a, ds, base={"embedding_checkpoint_id": emb})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == field  # still validating
    mark_ready(settings, Checkpoint, emb, kind="clustering", info={"num_clusters": 2})
    r = submit(client, keys.a, ds, base={"embedding_checkpoint_id": emb})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == field  # wrong kind
    r = submit(
        client, keys.a, ds, num_clusters=3, base={"method": "checkpoint", "clustering_checkpoint_id": emb}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "num_clusters"
    r = submit(client, keys.a, ds, base={"method": "checkpoint", "clustering_checkpoint_id": emb})
    assert r.status_code == 202, r.text
    # A queued job holds its checkpoint.
    assert client.delete(f"/v1/checkpoints/{emb}", headers=keys.a).status_code == 409


def test_idempotency_key(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    h = {**keys.a, "Idempotency-Key": "order-42"}
    first = submit(client, h, ds, seed=3)
    # The same request spelled differently (explicit default) is the same request.
    again = submit(client, h, ds, seed=3, refine={"epochs": 200})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = submit(client, h, ds, seed=4)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    # Keys are per owner: B may reuse A's key string.
    ds_b = ready_dataset(client, settings, keys.b)
    assert submit(client, {**keys.b, "Idempotency-Key": "order-42"}, ds_b).json()["id"] != first.json()["id"]
    assert _job_count(settings) == 2
    assert len(broker_tasks(settings, "gpu")) == 2


def test_idempotency_key_race_creates_one_job(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    h = {**keys.a, "Idempotency-Key": "race"}
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: submit(client, h, ds), range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert _job_count(settings) == 1


def test_list_pagination_and_status_filter(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    ids = [submit(client, keys.a, ds, seed=i).json()["id"] for i in range(5)]
    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/jobs", headers=keys.a, params=params).json()
        seen += [j["id"] for j in page["data"]]
        pages += 1
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
    assert seen == ids[::-1] and pages == 3  # newest first, 2 + 2 + 1
    _set_job(settings, ids[1], status="running")
    running = client.get("/v1/jobs", headers=keys.a, params={"status": "running"}).json()
    assert [j["id"] for j in running["data"]] == [ids[1]]
    for bad in ({"limit": 0}, {"limit": 101}, {"status": "done"}):
        r = client.get("/v1/jobs", headers=keys.a, params=bad)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == next(iter(bad))


def test_cancel(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    queued, running = (submit(client, keys.a, ds, seed=i).json()["id"] for i in range(2))
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=keys.a)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/v1/jobs/{queued}/cancel", headers=keys.a).status_code == 409
    _set_job(settings, running, status="running", started_at=utcnow())
    r = client.post(f"/v1/jobs/{running}/cancel", headers=keys.a)
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    # Running jobs cannot be deleted; cancelled ones can.
    assert client.delete(f"/v1/jobs/{running}", headers=keys.a).status_code == 409
    assert client.delete(f"/v1/jobs/{queued}", headers=keys.a).status_code == 204
    assert client.get(f"/v1/jobs/{queued}", headers=keys.a).status_code == 404


def _finish_with_outputs(settings: Settings, job_id: str) -> bytes:
    """What a worker leaves behind: metrics, a result and one artifact file."""
    content = b"index,base_cluster\n0,1\n"
    rel = f"jobs/{job_id}/artifacts/assignments.csv"
    path = settings.storage_dir / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with session_scope(settings.database_url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="succeeded",
                progress=1.0,
                epoch=2,
                result=RESULT_EXAMPLE,
                finished_at=utcnow(),
            )
        )
        s.add_all(
            [
                JobMetric(job_id=job_id, epoch=1, metrics={"loss": 2.0, "clean_size": 10}),
                JobMetric(job_id=job_id, epoch=2, metrics={"loss": 1.5, "note": "x"}),
                JobEvent(job_id=job_id, level="info", message="stage refining"),
                Artifact(
                    job_id=job_id,
                    name="assignments.csv",
                    path=rel,
                    size=len(content),
                    sha256=hashlib.sha256(content).hexdigest(),
                    media_type="text/csv",
                ),
            ]
        )
    return content


def test_result_metrics_artifacts(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    job_id = submit(client, keys.a, ds).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/result", headers=keys.a)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    content = _finish_with_outputs(settings, job_id)
    result = client.get(f"/v1/jobs/{job_id}/result", headers=keys.a).json()["result"]
    assert result["refined"] == RESULT_EXAMPLE["refined"] and result["refined"]["acc"] is not None
    m = client.get(f"/v1/jobs/{job_id}/metrics", headers=keys.a).json()
    assert m["epochs"] == [1, 2]
    assert m["series"] == {"clean_size": [10.0, None], "loss": [2.0, 1.5]}
    arts = client.get(f"/v1/jobs/{job_id}/artifacts", headers=keys.a).json()["data"]
    assert [(a["name"], a["size"], a["url"]) for a in arts] == [
        ("assignments.csv", len(content), f"/v1/jobs/{job_id}/artifacts/assignments.csv")
    ]
    r = client.get(arts[0]["url"], headers=keys.a)
    assert r.status_code == 200 and r.content == content and r.headers["content-type"].startswith("text/csv")
    events = client.get(f"/v1/jobs/{job_id}/events", headers=keys.a, params={"limit": 1}).json()
    assert events["has_more"] is True and len(events["data"]) == 1
    more = client.get(
        f"/v1/jobs/{job_id}/events", headers=keys.a, params={"after": events["next_after"]}
    ).json()
    assert [e["message"] for e in more["data"]] == ["stage refining"] and more["has_more"] is False
    # Deleting the job removes its rows and files.
    assert client.delete(f"/v1/jobs/{job_id}", headers=keys.a).status_code == 204
    assert not (settings.storage_dir / "jobs" / job_id).exists()
    with session_scope(settings.database_url) as s:
        for model in (JobEvent, JobMetric, Artifact):
            assert s.scalar(select(func.count()).select_from(model)) == 0
    # The dataset is free again once its jobs are gone.
    assert client.delete(f"/v1/datasets/{ds}", headers=keys.a).status_code == 204


def test_dataset_with_jobs_cannot_be_deleted(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    submit(client, keys.a, ds)
    r = client.delete(f"/v1/datasets/{ds}", headers=keys.a)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM


def test_artifact_path_traversal_is_404(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    job_id = submit(client, keys.a, ds).json()["id"]
    _finish_with_outputs(settings, job_id)
    secret = settings.data_dir / "ruc-secret.txt"
    secret.write_text("secret")
    # A row pointing outside storage (a compromised or buggy writer) is refused too.
    with session_scope(settings.database_url) as s:
        s.add(Artifact(job_id=job_id, name="evil.txt", path="../ruc-secret.txt", size=6, sha256="0" * 64))
    for name in [
        "..%2F..%2Fruc-secret.txt",
        "..%2Fstorage",
        "%2E%2E",
        ".hidden",
        "evil.txt",
        "%2Fetc%2Fpasswd",
    ]:
        r = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=keys.a)
        assert r.status_code == 404, name
        assert r.headers["content-type"] == PROBLEM
        assert b"secret" not in r.content
