"""POST /v1/jobs/{id}/predictions on SQLite and Postgres without a worker: every check the API makes
before queuing (a 422 naming the field, 404, 409, 413, 415), the two 202 routes, and the answers a
worker's outcome gives a request that is still waiting (200 with the result, 422 naming the field).
A feature job's rows are checked the same way by the name of its feature array (``features_clip``)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_support import Keys, broker_tasks, ready_dataset, submit, upload
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from service.client_errors import stored_error
from service.db.crud import predictions as crud
from service.db.models import Artifact, Dataset, Job, Prediction, utcnow
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


def _post_dataset(client: TestClient, headers: dict[str, str], job_id: str, body: object):
    return client.post(f"/v1/jobs/{job_id}/predictions", headers=headers, json=body)


def test_a_dataset_id_is_checked_from_its_facts_and_queued_without_copying_it(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _succeeded_job(client, settings, keys.a)
    grey = {"height": 8, "width": 8, "channels": 1, "has_images": True}

    def dataset(headers: dict[str, str] = keys.a, **facts: object) -> str:
        return ready_dataset(client, settings, headers, **{**grey, **facts})

    other = dataset(keys.b)
    assert _post_dataset(client, keys.a, job_id, {"dataset_id": other}).status_code == 404
    assert _post_dataset(client, keys.a, job_id, {"dataset_id": "ds_unknown"}).status_code == 404
    assert _post_dataset(client, keys.b, job_id, {"dataset_id": other}).status_code == 404  # B's, A's job
    validating = upload(client, keys.a)["id"]
    r = _post_dataset(client, keys.a, job_id, {"dataset_id": validating})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "dataset_id", r.text
    refused = upload(client, keys.a)["id"]
    with session_scope(settings.database_url) as s:
        s.execute(update(Dataset).where(Dataset.id == refused).values(status="invalid", reason="bad"))
    cases = [
        (refused, "dataset is invalid"),
        (dataset(channels=3), "its images have 3 channel(s) but the job's images have 1"),
        (dataset(height=16, width=12), "its images are 16x12 (HxW) but the job's images are 8x8"),
        (dataset(count=16), "its 16 images, more than the limit of 15"),
        (dataset(has_images=False, height=None), "the dataset has no images"),
    ]
    for ds_id, words in cases:
        r = _post_dataset(client, keys.a, job_id, {"dataset_id": ds_id})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (words, r.text)
        errors = r.json()["errors"]
        assert [e["field"] for e in errors] == ["dataset_id"] and words in errors[0]["problem"], errors
    for body, field in (({"dataset": "x"}, "dataset_id"), ({"dataset_id": "a/b"}, "dataset_id")):
        r = _post_dataset(client, keys.a, job_id, body)
        assert r.status_code == 422 and field in [e["field"] for e in r.json()["errors"]], r.text
    assert _predictions(settings) == 0 and broker_tasks(settings, "predict") == []

    large = dataset(count=SYNC_MAX + 1)
    t0 = time.monotonic()
    r = _post_dataset(client, keys.a, job_id, {"dataset_id": large})
    assert r.status_code == 202 and time.monotonic() - t0 < settings.predict_sync_seconds, r.text
    body = r.json()
    assert body["status"] == "queued" and body["count"] == SYNC_MAX + 1 and body["dataset_id"] == large
    assert r.headers["location"] == f"/v1/jobs/{job_id}/predictions/{body['id']}"
    assert client.get(r.headers["location"], headers=keys.a).json()["dataset_id"] == large
    with session_scope(settings.database_url) as s:
        row, ds = s.get(Prediction, body["id"]), s.get(Dataset, large)
        assert row is not None and ds is not None and row.path == ds.path and row.sha256 == ds.sha256
    assert _stored_predictions(settings) == []  # nothing copied: the worker reads the dataset's file
    assert broker_tasks(settings, "predict") == [("predictions.run", [body["id"]])]


def test_a_dataset_prediction_the_worker_finds_invalid_names_dataset_id(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _succeeded_job(client, settings, keys.a)
    ds_id = ready_dataset(client, settings, keys.a, height=8, width=8, channels=1, has_images=True, count=2)
    client.app.state.settings = settings.model_copy(update={"predict_sync_seconds": 8.0})  # type: ignore[attr-defined]
    problem = "images have 3 channel(s) but the job's images have 1"
    worker = _finish_when_queued(settings, status="invalid", error=f"invalid_input: images: {problem}")
    r = _post_dataset(client, keys.a, job_id, {"dataset_id": ds_id})
    worker.join()
    assert r.status_code == 422 and r.json()["errors"] == [
        {"field": "dataset_id", "problem": f"images: {problem}"}
    ]


# A feature job's result: its MLP heads read the 4-dimensional space "clip" (npz array features_clip).
FEATURE_RESULT = {
    **RESULT_EXAMPLE,
    "dataset": {**RESULT_EXAMPLE["dataset"], "height": None, "width": None, "channels": None},
    "base_info": {
        **RESULT_EXAMPLE["base_info"],
        "input": "features",
        "backbone": "mlp",
        "feature_space": {"name": "clip", "dim": 4, "mean_std": 1.0},
    },
}
CLIP = "features_clip"


def _feature_job(client: TestClient, settings: Settings, headers: dict[str, str]) -> str:
    job_id = _succeeded_job(client, settings, headers)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(result=FEATURE_RESULT))
    return job_id


def _rows(n: int, d: int = 4, dtype: Any = np.float32, key: str = CLIP) -> bytes:
    return _npz(**{key: np.ones((n, d), dtype)})


def test_a_feature_jobs_rows_are_checked_from_the_header_by_array_name(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _feature_job(client, settings, keys.a)
    cases = [
        (_rows(3, d=5), "has 5 dimensions but the job's feature space has 4"),
        (_rows(16), "16 rows, more than the limit of 15"),  # K x 16 > MAX_VALUES
        (_rows(0), "is empty"),
        (_rows(3, dtype=np.int32), "must be a float array (N, D), got dtype int32"),
        (_npz(**{CLIP: np.ones((3, 4, 1), np.float32)}), "must be 2-D (N, D)"),
        (_rows(3, key="features"), "missing: this job's networks read the feature array 'features_clip'"),
        (_images(3), "(found keys: images)"),
    ]
    for data, words in cases:
        r = _post(client, keys.a, job_id, data)
        assert r.status_code == 422, (words, r.text)
        errors = r.json()["errors"]
        assert [e["field"] for e in errors] == [CLIP] and words in errors[0]["problem"], (words, errors)
    r = _post(client, keys.a, job_id, b"PK\x03\x04", name="x.zip")  # read only by the worker for images
    assert r.status_code == 422 and r.json()["errors"][0] == {
        "field": CLIP,
        "problem": "a feature job's inputs are an .npz array; an image archive has none",
    }
    assert _predictions(settings) == 0 and _stored_predictions(settings) == []
    assert broker_tasks(settings, "predict") == []

    half, wide = (
        _post(client, keys.a, job_id, _rows(3, dtype=np.float16)),
        _post(client, keys.a, job_id, _rows(SYNC_MAX + 1, dtype=np.float64)),
    )
    assert (half.status_code, half.json()["count"]) == (202, 3), half.text
    assert (wide.status_code, wide.json()["count"]) == (202, SYNC_MAX + 1), wide.text
    assert len(broker_tasks(settings, "predict")) == 2


def test_a_feature_jobs_dataset_id_is_checked_from_its_feature_spaces(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    job_id = _feature_job(client, settings, keys.a)

    def dataset(**spaces: int) -> str:
        return ready_dataset(client, settings, keys.a, count=3, has_images=False, feature_spaces=spaces)

    cases = [
        (dataset(clip=5), f"{CLIP}: has 5 dimensions but the job's feature space has 4"),
        (dataset(dino=4), f"{CLIP}: missing: the dataset has no feature space 'clip' (it has: dino)"),
        (ready_dataset(client, settings, keys.a, height=8, width=8, channels=1), "(it has: none)"),
        (
            ready_dataset(client, settings, keys.a, count=16, feature_spaces={"clip": 4}),
            f"{CLIP}: 16 rows, more than the limit of 15",
        ),
    ]
    for ds_id, words in cases:
        r = _post_dataset(client, keys.a, job_id, {"dataset_id": ds_id})
        assert r.status_code == 422, (words, r.text)
        errors = r.json()["errors"]
        assert [e["field"] for e in errors] == ["dataset_id"] and words in errors[0]["problem"], errors
    assert _predictions(settings) == 0
    r = _post_dataset(client, keys.a, job_id, {"dataset_id": dataset(dino=8, clip=4)})
    assert (r.status_code, r.json()["count"]) == (202, 3), r.text

    # Non-finite values are found by the worker, which names the array as the API does.
    client.app.state.settings = settings.model_copy(update={"predict_sync_seconds": 8.0})  # type: ignore[attr-defined]
    problem = "1 non-finite value (NaN, inf or beyond float32; first in row 2)"
    with session_scope(settings.database_url) as s:  # the queued one above ends first
        assert crud.start_prediction(s, r.json()["id"], max_attempts=3).outcome == "started"
        assert crud.finish_prediction(s, r.json()["id"], status="succeeded", result={"assignments": []})
    worker = _finish_when_queued(settings, status="invalid", error=f"invalid_input: {CLIP}: {problem}")
    r = _post(client, keys.a, job_id, _rows(3))
    worker.join()
    assert r.status_code == 422 and r.json()["errors"] == [{"field": CLIP, "problem": problem}]
