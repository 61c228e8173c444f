"""Worker pieces on an embedded SQLite database: progress mapping, heartbeat loss detection,
validation outcomes, whole runs (webhooks: test_webhooks.py)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from core.spec import JobSpec
from service.db.crud import job_runs
from service.db.models import ApiKey, Checkpoint, Dataset, Job, new_id
from service.db.session import dispose_engines, session_scope
from service.settings import Settings, get_settings


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for key in ("RUC_DATABASE_URL", "RUC_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RUC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RUC_WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv("RUC_HEARTBEAT_SECONDS", "1")
    get_settings.cache_clear()
    dispose_engines()
    s = get_settings()
    s.ensure_dirs()
    from service.db.migrate import upgrade_head

    upgrade_head(s.database_url)
    yield s
    dispose_engines()
    get_settings.cache_clear()


def _rows(*, dataset_path: str = "datasets/d/data.npz") -> tuple[str, str]:
    with session_scope() as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="ruc_x")
        s.add(key)
        s.flush()
        ds = Dataset(
            id=new_id("ds"), owner_id=key.id, filename="d.npz", size=1, sha256="0" * 64, path=dataset_path
        )
        s.add(ds)
        s.flush()
        job = Job(
            id=new_id("job"), owner_id=key.id, dataset_id=ds.id, spec={"dataset_id": ds.id, "num_clusters": 3}
        )
        s.add(job)
        s.flush()
        return ds.id, job.id


def test_overall_progress_is_monotonic_across_stages_and_ends_at_one() -> None:
    from worker.progress import STAGES, overall_progress, stage_weights

    spec = JobSpec(dataset_id="ds_x", num_clusters=10, refine={"epochs": 50}, base={"fit_epochs": 10})
    weights = stage_weights(spec)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["refining"] / weights["base_clustering"] == pytest.approx(4 * 50 / 10)
    points = [overall_progress(weights, stage, f) for stage in STAGES for f in (0.0, 0.25, 0.5, 1.0)]
    assert points == sorted(points) and points[0] == 0.0 and points[-1] == pytest.approx(1.0)


def test_heartbeat_notices_a_lost_lease(settings: Settings) -> None:
    from worker.leases import LeaseKeeper

    _, job_id = _rows()
    with session_scope() as s:
        claim = job_runs.claim_job(s, job_id, owner="me", lease_seconds=30)
        assert claim.outcome == "claimed"
    with LeaseKeeper(claim.lease, settings) as keeper:
        assert not keeper.lost.wait(1.5)
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(lease_owner="someone-else"))
        assert keeper.lost.wait(3.0)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_validation_records_ready_with_facts_or_invalid_with_the_reason(settings: Settings) -> None:
    from worker.validation import validate_checkpoint, validate_dataset

    rng = np.random.default_rng(0)
    cases = {
        "good": _npz(images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), labels=np.arange(12) % 3),
        "noimages": _npz(pixels=np.zeros((2, 8, 8, 1), np.uint8)),
        "garbage": b"\x00not a zip archive" * 10,
    }
    ids = {}
    for name, content in cases.items():
        rel = f"datasets/{name}/data.npz"
        (settings.storage_dir / rel).parent.mkdir(parents=True)
        (settings.storage_dir / rel).write_bytes(content)
        ids[name] = _rows(dataset_path=rel)[0]
    assert [validate_dataset(ids[n]) for n in cases] == ["ready", "invalid", "invalid"]
    with session_scope() as s:
        good, noimg, garbage = (job_runs.get_dataset(s, ids[n]) for n in cases)
        assert good is not None and good.facts is not None
        assert good.facts["count"] == 12 and good.facts["channels"] == 3 and good.facts["label_count"] == 3
        assert noimg is not None and noimg.reason and "images" in noimg.reason
        assert garbage is not None and garbage.status == "invalid" and garbage.reason
    # A row is decided once: a redelivered message (the recovery sweep sends duplicates) does not
    # read the file again nor flip the row, even when the file has gone meanwhile.
    (settings.storage_dir / "datasets/good/data.npz").unlink()
    assert validate_dataset(ids["good"]) == "ready"
    with session_scope() as s:
        again = job_runs.get_dataset(s, ids["good"])
        assert again is not None and again.status == "ready" and again.reason is None
    assert validate_dataset("ds_missing") == "missing"

    with session_scope() as s:
        owner = job_runs.get_dataset(s, ids["good"]).owner_id  # type: ignore[union-attr]
        ck = Checkpoint(
            id=new_id("ck"), owner_id=owner, filename="x.pt", size=5, sha256="0" * 64, path="../outside.pt"
        )
        s.add(ck)
        s.flush()
        ck_id = ck.id
    assert validate_checkpoint(ck_id) == "invalid"
    with session_scope() as s:
        row = job_runs.get_checkpoint(s, ck_id)
        assert row is not None and row.reason == "path: stored path is outside the storage folder"


def _job_with_dataset(settings: Settings, content: bytes, spec_extra: dict[str, Any] | None = None) -> str:
    rel = f"datasets/{new_id('d')}/data.npz"
    (settings.storage_dir / rel).parent.mkdir(parents=True)
    (settings.storage_dir / rel).write_bytes(content)
    ds_id, job_id = _rows(dataset_path=rel)
    spec = {
        "dataset_id": ds_id,
        "num_clusters": 3,
        "base": {
            "method": "kmeans",
            "backbone": "small_cnn",
            "fit_epochs": 1,
            "kmeans_restarts": 1,
            "pca_dim": 8,
        },
        "refine": {"strategy": "confidence", "confidence_threshold": 0.5, "epochs": 3, "batch_size": 32},
        "evaluate": {"attacks": [{"kind": "fgsm", "eps": [0.03]}], "attack_max_samples": 16},
        **(spec_extra or {}),
    }
    with session_scope() as s:
        s.execute(update(Dataset).where(Dataset.id == ds_id).values(status="ready"))
        s.execute(update(Job).where(Job.id == job_id).values(spec=spec, total_epochs=3))
    return job_id


def _blobs_npz(n: int = 96) -> bytes:
    """Three well-separated brightness classes of 8x8 grey images, labels 0..2."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    images = (labels[:, None, None, None] * 100 + rng.integers(0, 40, (n, 8, 8, 1))).astype(np.uint8)
    return _npz(images=images, labels=labels)


def test_run_job_delivery_stores_result_metrics_events_and_artifacts(settings: Settings) -> None:
    from worker.artifacts import sha256_file
    from worker.job_runner import run_job_delivery

    job_id = _job_with_dataset(settings, _blobs_npz())
    assert run_job_delivery(job_id, settings=settings, device="cpu", owner="w1") == "succeeded"
    assert run_job_delivery(job_id, settings=settings, device="cpu", owner="w2") == "dropped: finished"
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
        messages = job_runs.list_event_messages(s, job_id)
        from sqlalchemy import select

        from service.db.models import Artifact, JobMetric

        metrics = s.scalars(
            select(JobMetric.epoch).where(JobMetric.job_id == job_id).order_by(JobMetric.epoch)
        ).all()
        artifacts = s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
    assert job is not None and job.status == "succeeded" and job.progress == 1.0 and job.epoch == 3
    assert job.result is not None and {"base", "refined", "robustness", "clean_set"} <= set(job.result)
    assert list(metrics) == [1, 2, 3]
    stage_events = [m for m in messages if m.startswith("stage ")]
    assert stage_events == [
        f"stage {s}" for s in ("loading", "base_clustering", "sampling", "refining", "evaluating", "saving")
    ]
    assert messages[-1] == "job succeeded"
    core_names = {"refined_ensemble.safetensors", "assignments.csv", "result.json"}
    names = {a.name for a in artifacts}
    assert core_names | {"report.html", "training.png", "cluster_sizes.png"} <= names, names
    media = {a.name: a.media_type for a in artifacts}
    assert media["report.html"] == "text/html; charset=utf-8" and media["training.png"] == "image/png"
    for a in artifacts:
        path = settings.storage_dir / a.path
        assert a.path.startswith(f"jobs/{job_id}/artifacts/1/") and path.stat().st_size == a.size
        assert sha256_file(path) == a.sha256
    assert not (settings.storage_dir / "jobs" / job_id / "attempts").exists()


def test_bad_input_fails_the_job_with_the_reason(settings: Settings) -> None:
    from worker.job_runner import run_job_delivery

    job_id = _job_with_dataset(settings, _npz(pixels=np.zeros((3, 8, 8, 1), np.uint8)))
    assert run_job_delivery(job_id, settings=settings, device="cpu", owner="w1") == "failed"
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
    assert job is not None and job.status == "failed" and job.lease_owner is None
    assert job.error is not None and "images" in job.error


def test_cancel_requested_mid_run_ends_cancelled_and_a_stolen_lease_writes_nothing(
    settings: Settings,
) -> None:
    from worker import job_runner

    def run_and_interfere(values: dict[str, Any], owner: str) -> tuple[str, Job]:
        job_id = _job_with_dataset(
            settings,
            _blobs_npz(),
            {
                "refine": {
                    "strategy": "confidence",
                    "epochs": 200,
                    "confidence_threshold": 0.5,
                    "batch_size": 32,
                }
            },
        )

        def interfere() -> None:
            wait = threading.Event()
            while not wait.wait(0.1):
                with session_scope() as s:
                    job = job_runs.get_job(s, job_id)
                    if job is not None and (job.epoch or 0) >= 1:
                        s.execute(update(Job).where(Job.id == job_id).values(**values))
                        return

        t = threading.Thread(target=interfere, daemon=True)
        t.start()
        outcome = job_runner.run_job_delivery(job_id, settings=settings, device="cpu", owner=owner)
        t.join(timeout=5)
        with session_scope() as s:
            job = job_runs.get_job(s, job_id)
        assert job is not None
        return outcome, job

    outcome, job = run_and_interfere({"cancel_requested": True}, "w1")
    assert outcome == "cancelled" and job.status == "cancelled" and job.result is None
    assert job.epoch is not None and job.epoch < 200

    outcome, job = run_and_interfere({"lease_owner": "thief"}, "w2")
    assert outcome == "lease_lost"
    assert job.status == "running" and job.lease_owner == "thief" and job.result is None


def test_a_worker_whose_lease_was_taken_over_writes_nothing_and_deletes_nothing(settings: Settings) -> None:
    from sqlalchemy import func, select

    from service.db.models import Artifact, JobEvent, JobMetric
    from worker import job_runner

    slow_eval = {
        "attacks": [{"kind": "bim", "eps": [0.01, 0.02, 0.03, 0.05, 0.08, 0.1], "steps": 100}],
        "attack_max_samples": 96,
    }
    job_id = _job_with_dataset(settings, _blobs_npz(), {"evaluate": slow_eval})
    root = settings.storage_dir / "jobs" / job_id
    # The heartbeat must not notice first: the stale worker learns of the takeover only from its writes.
    quiet = settings.model_copy(update={"heartbeat_seconds": 120})
    seen: dict[str, Any] = {}

    def counts() -> tuple[int, ...]:
        with session_scope() as s:
            return tuple(
                s.scalar(select(func.count()).select_from(t).where(t.job_id == job_id))
                for t in (JobEvent, JobMetric, Artifact)
            )

    def take_over() -> None:
        stop = threading.Event()
        while not stop.wait(0.02):
            with session_scope() as s:
                job = job_runs.get_job(s, job_id)
                if job is None or job.stage != "evaluating":
                    continue
            with session_scope() as s:  # w1 stalled past its lease; w2's delivery claims the job
                s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=job.heartbeat_at))
                seen["claim"] = job_runs.claim_job(s, job_id, owner="w2", lease_seconds=600).outcome
            seen["counts"] = counts()
            seen["files"] = {p for p in root.rglob("*") if p.is_file()}
            return

    t = threading.Thread(target=take_over, daemon=True)
    t.start()
    outcome = job_runner.run_job_delivery(job_id, settings=quiet, device="cpu", owner="w1")
    t.join(timeout=5)
    assert seen.get("claim") == "claimed", "the takeover did not happen during evaluating"
    assert outcome == "lease_lost"
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
    assert job is not None and job.status == "running" and job.lease_owner == "w2" and job.attempts == 2
    assert job.result is None and job.stage == "evaluating"
    assert counts() == seen["counts"], "the stale worker wrote events, metrics or artifacts"
    missing = sorted(str(p.relative_to(root)) for p in seen["files"] if not p.exists())
    assert missing == [], f"the stale worker deleted {missing}"
    print(f"files kept for the new owner: {sorted(str(p.relative_to(root)) for p in seen['files'])}")
