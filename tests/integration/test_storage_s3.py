"""The whole service on the s3 backend: the API and a worker (both queues) as subprocesses, a real S3
HTTP endpoint (moto's server), Postgres and Redis. Upload, validate, run a job, download its artifacts
through the API; the local data folder holds no stored file, only the workers' scratch (empty once the
job is done); deleting the job and the dataset removes their objects. Also: resume files reach an
attempt on a machine that never saw the earlier attempt's folder."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import (
    REDIS_HOST,
    Services,
    create_key,
    digits_npz,
    get_job,
    service_env,
    small_spec,
    upload,
    wait_for,
    wait_upload,
)
from s3_support import MotoS3

from service.db.crud.job_runs import Lease
from service.settings import Settings
from service.storage import get_storage

PREFIX = "ruc/it"


@pytest.fixture(scope="module")
def bucket(moto: MotoS3) -> str:
    return moto.new_bucket()


@pytest.fixture(scope="module")
def s3_services(
    private_pg_url: str, redis_url: str, moto: MotoS3, bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """API + one worker for both queues (one start-up less on 2 cores) on a database and a Redis number
    of their own (the session's local-backend workers must not take these messages), storing in
    ``bucket``."""
    import redis

    broker = f"{REDIS_HOST}/{1 + (os.getpid() + 4) % 9}"
    redis.Redis.from_url(broker).flushdb()
    data_dir = tmp_path_factory.mktemp("ruc-s3")
    env = service_env(data_dir, private_pg_url, broker, **moto.env(bucket, prefix=PREFIX))
    svc = Services(
        env=env, data_dir=data_dir, log_dir=data_dir.parent / "ruc-s3-logs", database_url=private_pg_url
    )
    svc.key = create_key(private_pg_url)
    try:
        svc.start_worker("gpu,cpu")
        svc.start_api()
        yield svc
    finally:
        svc.stop()
        redis.Redis.from_url(broker).flushdb()


def _local_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_whole_job_on_s3_stores_nothing_locally(s3_services: Services, moto: MotoS3, bucket: str) -> None:
    started = time.monotonic()
    with s3_services.client() as client:
        ds = wait_upload(client, "/v1/datasets", upload(client, "/v1/datasets", "d.npz", digits_npz(n=200)))
        assert ds["status"] == "ready" and ds["facts"]["count"] == 200, ds
        job = client.post("/v1/jobs", json=small_spec(ds["id"], epochs=1)).json()
        done = wait_for(
            lambda: (j := get_job(client, job["id"]))["status"] not in ("queued", "running") and j,
            240,
            1.0,
            f"job {job['id']}",
        )
        assert done["status"] == "succeeded", done
        listed = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        names = {a["name"] for a in listed}
        assert {"assignments.csv", "result.json", "refined_ensemble.safetensors", "report.html"} <= names
        for art in listed:
            r = client.get(art["url"])
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == art["sha256"], art[
                "name"
            ]
            assert len(r.content) == art["size"]
        print(f"\njob on s3 took {time.monotonic() - started:.1f} s; {len(listed)} artifacts downloaded")

        keys = moto.keys(bucket)
        assert all(k.startswith(f"{PREFIX}/") for k in keys), keys
        job_keys = {k for k in keys if k.startswith(f"{PREFIX}/jobs/{job['id']}/")}
        # Published artifacts only: the success cleanup removed the stored resume files.
        assert job_keys == {f"{PREFIX}/jobs/{job['id']}/artifacts/1/{n}" for n in names}
        assert f"{PREFIX}/datasets/{ds['id']}/data.npz" in keys
        data = s3_services.data_dir
        assert not (data / "storage").exists()  # the local store's folder is never even created
        # The workers' scratch held the job's work folder and fetched inputs, and nothing is left of them.
        assert _local_files(data / "scratch") == []

        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert not [k for k in moto.keys(bucket) if f"/jobs/{job['id']}/" in k]
        assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
        assert not [k for k in moto.keys(bucket) if f"/datasets/{ds['id']}/" in k]
        r = client.get(f"/v1/jobs/{job['id']}/artifacts/assignments.csv")
        assert r.status_code == 404


def test_resume_files_reach_an_attempt_on_another_machine(moto: MotoS3, bucket: str, tmp_path: Path) -> None:
    from worker import artifacts
    from worker.resume_sync import ResumeSync

    env = moto.env(bucket, prefix=f"{PREFIX}/resume")
    s3 = {k.removeprefix("RUC_").lower(): v for k, v in env.items()}
    first = Settings(data_dir=tmp_path / "machine-a", **s3)
    second = Settings(data_dir=tmp_path / "machine-b", **s3)
    store = get_storage(first)
    lease1, lease2 = Lease("job_r", "a", 1), Lease("job_r", "b", 2)

    work = artifacts.prepare_work_dir(first, store, lease1)
    assert work.is_relative_to(first.scratch_dir)
    lost = threading.Event()
    sync = ResumeSync(store, lease1, work, lost)
    (work / "base.pt").write_bytes(b"base" * 100)
    (work / "run_1_seed_1").mkdir()
    (work / "run_1_seed_1" / "ruc_checkpoint.pt").write_bytes(b"epoch 1")
    (work / "notes.txt").write_bytes(b"not a resume file")
    sync()
    (work / "run_1_seed_1" / "ruc_checkpoint.pt").write_bytes(b"epoch 2, longer")
    sync()
    lost.set()  # a worker that lost its lease puts nothing more
    (work / "run_1_seed_1" / "ruc_checkpoint.pt").write_bytes(b"epoch 3 by a stale worker")
    sync()
    stored = {o.key: o.size for o in store.list("jobs/job_r")}
    assert stored == {
        "jobs/job_r/attempts/1/work/base.pt": 400,
        "jobs/job_r/attempts/1/work/run_1_seed_1/ruc_checkpoint.pt": len(b"epoch 2, longer"),
    }

    target = artifacts.prepare_work_dir(second, get_storage(second), lease2)  # machine b: no folder of a's
    assert target.is_relative_to(second.scratch_dir)
    assert (target / "base.pt").read_bytes() == b"base" * 100
    assert (target / "run_1_seed_1" / "ruc_checkpoint.pt").read_bytes() == b"epoch 2, longer"
    assert not (target / "notes.txt").exists()

    artifacts.clean_after_success(second, store, lease2)
    assert store.list("jobs/job_r") == [] and not (second.scratch_dir / "jobs" / "job_r").exists()


@pytest.fixture
def s3_settings(
    moto: MotoS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The process's settings (what ``worker.gc`` reads): SQLite, the s3 backend on a prefix of its own."""
    from service.db.migrate import upgrade_head
    from service.db.session import dispose_engines
    from service.settings import get_settings

    for key in ("RUC_DATABASE_URL", "RUC_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RUC_DATA_DIR", str(tmp_path / "data"))
    for key, value in moto.env(bucket, prefix=f"{PREFIX}/gc-{tmp_path.name}").items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    dispose_engines()
    settings = get_settings()
    upgrade_head(settings.database_url)
    yield settings
    dispose_engines()
    get_settings.cache_clear()


def test_retention_and_orphans_on_s3_cover_the_bucket_and_the_scratch(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_gc import _dataset, _ended_job
    from test_worker_parts import _rows

    from service.db.models import Artifact
    from service.db.session import session_scope
    from worker import gc

    monkeypatch.setattr(gc, "ORPHAN_GRACE_SECONDS", 0)  # moto's objects cannot be dated back
    store, scratch = get_storage(s3_settings), s3_settings.scratch_dir
    rows = _rows()
    failed, recent, ok = (
        _ended_job(rows, st, d) for st, d in (("failed", 40), ("failed", 1), ("succeeded", 90))
    )
    bad, ready = _dataset(rows[0], "invalid", 45), _dataset(rows[0], "ready", 400)
    for key, size in (
        (f"jobs/{failed}/attempts/1/work/run_0_seed_0/ruc_checkpoint.pt", 1000),  # a synced resume file
        (f"jobs/{failed}/artifacts/1/assignments.csv", 200),  # unpublished
        (f"jobs/{recent}/attempts/1/work/base.pt", 500),
        (f"jobs/{ok}/artifacts/1/result.json", 80),
        (f"jobs/{ok}/artifacts/2/stale.csv", 70),
        (f"datasets/{bad}/data.npz", 400),
        (f"datasets/{ready}/data.npz", 700),
        ("datasets/ds_gone/data.npz", 60),  # its row was deleted, the object was not
    ):
        store.put_bytes(key, b"x" * size)
    with session_scope() as s:
        s.add(
            Artifact(
                job_id=ok,
                name="result.json",
                path=f"jobs/{ok}/artifacts/1/result.json",
                size=80,
                sha256="0" * 64,
                media_type="application/json",
            )
        )
    for rel, size in (
        (f"jobs/{failed}/attempts/1/work/base.pt", 300),
        ("jobs/job_gone/attempts/1/work/base.pt", 30),
        (f"validation/dataset/{ready}/datasets/{ready}/data.npz", 700),  # a crashed validation's copy
    ):
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(b"y" * size)

    removed = gc.collect_garbage(s3_settings, retention_days=30)
    assert {r.path: r.bytes for r in removed} == {
        f"jobs/{failed}/attempts": 1000,
        f"jobs/{failed}/artifacts/1": 200,
        f"jobs/{ok}/artifacts/2": 70,
        f"datasets/{bad}": 400,
        "datasets/ds_gone": 60,
        f"scratch:jobs/{failed}/attempts": 300,
        "scratch:jobs/job_gone": 30,
        f"scratch:validation/dataset/{ready}": 700,
    }
    assert {o.key for o in store.list("jobs")} == {
        f"jobs/{ok}/artifacts/1/result.json",
        f"jobs/{recent}/attempts/1/work/base.pt",
    }
    assert [o.key for o in store.list("datasets")] == [f"datasets/{ready}/data.npz"]
    assert _local_files(scratch) == []
    assert gc.collect_garbage(s3_settings, retention_days=30) == []


def test_a_checkpoint_fetched_from_s3_comes_with_its_validated_statement(s3_settings: Settings) -> None:
    from test_worker_parts import _rows

    from core.models import parse_statement, read_statement
    from core.spec import JobSpec
    from service.db.models import Checkpoint, Job, new_id
    from service.db.session import session_scope
    from worker.job_runner import _resolve_checkpoints

    ds_id, job_id = _rows()
    stated = {"backbone": "resnet18_stl", "normalisation": "stl10"}
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        ck = Checkpoint(
            id=new_id("ck"), owner_id=job.owner_id, filename="m.pt", size=4, sha256="0" * 64, path="x"
        )
        s.add(ck)
        s.flush()
        ck.path, ck.status, ck.kind = f"checkpoints/{ck.id}/model.pt", "ready", "clustering"
        ck.info = {"num_clusters": 3, "stated": stated}
        ck_id, owner = ck.id, job.owner_id
    store = get_storage(s3_settings)
    store.put_bytes(f"checkpoints/{ck_id}/model.pt", b"ckpt")
    spec = JobSpec(
        dataset_id=ds_id, num_clusters=3, base={"method": "checkpoint", "clustering_checkpoint_id": ck_id}
    )
    cache = s3_settings.scratch_dir / "inputs"
    paths = _resolve_checkpoints(
        Job(id=job_id, owner_id=owner, dataset_id=ds_id, spec={}), spec, store, cache
    )
    assert paths[ck_id] == cache / f"checkpoints/{ck_id}/model.pt" and paths[ck_id].read_bytes() == b"ckpt"
    assert read_statement(paths[ck_id]) == parse_statement(stated)
    assert [o.key for o in store.list("checkpoints")] == [
        f"checkpoints/{ck_id}/model.pt"
    ]  # nothing extra stored
