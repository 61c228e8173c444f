"""POST /v1/jobs/{id}/predictions on SQLite and Postgres without a worker: every check the API makes
before queuing (a 422 naming the field, 404, 409, 413, 415), the two 202 routes, and the answers a
worker's outcome gives a request that is still waiting (200 with the result, 422 naming the field)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_support import Keys, broker_tasks, ready_dataset, submit
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from service.client_errors import stored_error
from service.db.crud import predictions as crud
from service.db.models import Artifact, Job, Prediction, utcnow
from service.db.session import session_scope
from service.settings import Settings

RESULT_EXAMPLE = json.loads((Path(__file__).parent / "result_example.json").read_text())  # 8x8x1, K = 3
PROBLEM = "application/problem+json"
SYNC_MAX, MAX_IMAGES, MAX_VALUES = 8, 20, 45  # K = 3: at most 45 // 3 = 15 images per request


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "predict_sync_max_images": SYNC_MAX,
            "predict_sync_seconds": 0.5,
            "predict_max_images": MAX_IMAGES,
            "predict_max_values": MAX_VALUES,
            "predict_max_upload_bytes": 64 * 1024,
        }
    )


def _succeeded_job(client: TestClient, settings: Settings, headers: dict[str, str]) -> str:
    """What a finished worker leaves: a succeeded job with its result and its ensemble's artifact row."""
    job_id = submit(client, headers, ready_dataset(client, settings, headers)).json()["id"]
    with session_scope(settings.database_url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", progress=1.0, result=RESULT_EXAMPLE, finished_at=utcnow())
        )
        s.add(
            Artifact(
                job_id=job_id,
                name="refined_ensemble.safetensors",
                path=f"jobs/{job_id}/artifacts/1/refined_ensemble.safetensors",
                size=1,
                sha256="0" * 64,
            )
        )
    return job_id


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _images(n: int, h: int = 8, w: int = 8, c: int = 1, dtype: Any = np.uint8) -> bytes:
    return _npz(images=np.full((n, h, w, c), 7, dtype=dtype))


def _post(client: TestClient, headers: dict[str, str], job_id: str, data: bytes, name: str = "x.npz"):
    return client.post(f"/v1/jobs/{job_id}/predictions", headers=headers, files={"file": (name, data)})


def _predictions(settings: Settings) -> int:
    with session_scope(settings.database_url) as s:
        return int(s.scalar(select(func.count()).select_from(Prediction)) or 0)


def _stored_predictions(settings: Settings) -> list[Path]:
    return [p for p in settings.storage_dir.glob("jobs/*/predictions/**/*") if p.is_file()]


def test_images_that_cannot_fit_the_job_are_422s_naming_the_field(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _succeeded_job(client, settings, keys.a)
    cases = [
        (_images(3, dtype=np.float32), "images", "must have dtype uint8"),
        (_images(3, c=3), "images", "have 3 channel(s) but the job's images have 1"),
        (_images(3, h=16, w=12), "images", "are 16x12 (HxW) but the job's images are 8x8"),
        (_images(0), "images", "is empty"),
        (_images(16), "images", "16 images, more than the limit of 15"),  # K x 16 > MAX_VALUES
        (_npz(images=np.zeros((3, 8, 8, 1, 1), np.uint8)), "images", "must have rank 4"),
        (_npz(images=np.array([None] * 3, dtype=object)), "images", "object array"),
        (_npz(pixels=np.zeros((3, 8, 8, 1), np.uint8)), "images", "missing"),
        (b"PK\x03\x04 not really a zip", "npz", "not a valid .npz file"),
    ]
    for data, field, words in cases:
        r = _post(client, keys.a, job_id, data)
        assert r.status_code == 422, (words, r.text)
        assert r.headers["content-type"] == PROBLEM
        body = r.json()
        assert [e["field"] for e in body["errors"]] == [field], (words, body)
        assert words in body["errors"][0]["problem"], (words, body)
        assert "/" not in body["detail"].replace("(N, H, W, C)", ""), body["detail"]  # no paths
    assert _predictions(settings) == 0 and _stored_predictions(settings) == []
    assert broker_tasks(settings, "predict") == []


def test_refusals_before_anything_is_queued(client: TestClient, keys: Keys, settings: Settings) -> None:
    job_id = _succeeded_job(client, settings, keys.a)
    small = _images(2)
    assert _post(client, keys.b, job_id, small).status_code == 404  # another owner's job
    assert _post(client, keys.a, "job_unknown", small).status_code == 404
    queued = submit(client, keys.a, ready_dataset(client, settings, keys.a)).json()["id"]
    r = _post(client, keys.a, queued, small)
    assert r.status_code == 409 and r.json()["code"] == "not-finished"
    r = _post(client, keys.a, job_id, b"abc", name="x.txt")
    assert r.status_code == 415 and r.json()["errors"][0]["field"] == "file"
    r = client.post(f"/v1/jobs/{job_id}/predictions", headers=keys.a, data={"other": "x"})
    assert r.status_code in (415, 422) and r.json()["errors"][0]["field"] == "file"
    r = _post(client, keys.a, job_id, b"\0" * (settings.predict_max_upload_bytes + 1))
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file"
    assert _predictions(settings) == 0 and _stored_predictions(settings) == []
    assert broker_tasks(settings, "predict") == []
    assert client.get(f"/v1/jobs/{job_id}/predictions/pred_unknown", headers=keys.a).status_code == 404


def test_a_small_request_waits_for_its_answer_a_large_one_is_202_at_once(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _succeeded_job(client, settings, keys.a)
    t0 = time.monotonic()
    small = _post(client, keys.a, job_id, _images(SYNC_MAX))
    waited = time.monotonic() - t0
    t0 = time.monotonic()
    large = _post(client, keys.a, job_id, _images(SYNC_MAX + 1))
    at_once = time.monotonic() - t0
    print(f"no worker: {SYNC_MAX} images answered after {waited:.2f} s, {SYNC_MAX + 1} after {at_once:.2f} s")
    for r, n in ((small, SYNC_MAX), (large, SYNC_MAX + 1)):
        assert r.status_code == 202, r.text
        body = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job_id}/predictions/{body['id']}"
        assert body["status"] == "queued" and body["count"] == n and body["assignments"] is None
        got = client.get(r.headers["location"], headers=keys.a).json()
        assert got["id"] == body["id"] and got["status"] == "queued"
        assert client.get(r.headers["location"], headers=keys.b).status_code == 404
        stored = settings.storage_dir / f"jobs/{job_id}/predictions/{body['id']}/images.npz"
        assert stored.is_file()
    assert waited >= settings.predict_sync_seconds > at_once
    assert broker_tasks(settings, "predict") == [
        ("predictions.run", [small.json()["id"]]),
        ("predictions.run", [large.json()["id"]]),
    ]


def _finish_when_queued(settings: Settings, **outcome: Any) -> threading.Thread:
    """What the worker does, from another thread: take the queued prediction and write ``outcome``."""

    def work() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with session_scope(settings.database_url) as s:
                ids = s.scalars(select(Prediction.id).where(Prediction.status == "queued")).all()
                if ids:
                    assert crud.start_prediction(s, ids[0], max_attempts=3).outcome == "started"
                    assert crud.finish_prediction(s, ids[0], **outcome)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_an_outcome_written_while_the_request_waits_is_its_answer(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _succeeded_job(client, settings, keys.a)
    client.app.state.settings = settings.model_copy(update={"predict_sync_seconds": 8.0})  # type: ignore[attr-defined]
    result = {"assignments": [2, 0], "probabilities": [[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]}
    worker = _finish_when_queued(settings, status="succeeded", result=result)
    t0 = time.monotonic()
    r = _post(client, keys.a, job_id, _images(2))
    print(f"answered {time.monotonic() - t0:.2f} s after the upload began")
    worker.join()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded" and body["error"] is None
    assert body["assignments"] == [2, 0] and body["probabilities"] == result["probabilities"]
    assert client.get(r.headers["location"], headers=keys.a).json()["assignments"] == [2, 0]

    problem = "images have 3 channel(s) but the job's images have 1"
    worker = _finish_when_queued(settings, status="invalid", error=f"invalid_input: images: {problem}")
    r = _post(client, keys.a, job_id, _images(2))  # an archive's channels are known only once read
    worker.join()
    assert r.status_code == 422 and r.json()["errors"] == [{"field": "images", "problem": problem}]

    # The worker stores what it caught as service.client_errors does: a code and a fixed message.
    failed = stored_error(RuntimeError("boom at /srv/x.py"))
    worker = _finish_when_queued(settings, status="failed", error=failed)
    r = _post(client, keys.a, job_id, _images(2))
    worker.join()
    body = r.json()
    assert r.status_code == 200 and body["status"] == "failed" and body["error_code"] == "internal_error"
    assert "/srv" not in r.text and body["assignments"] is None
