"""Predictions against the live stack (API, gpu, cpu and predict workers on Postgres and Redis): a
small job's own images, predicted through HTTP and ruc_client, get exactly the refined assignments of
its downloaded assignments.csv; a small request is answered at once (200), a large one (202) through
its Location; an archive is read by the worker; images of another kind are a 422 naming the field;
`ruc-service jobs predict` writes the same answers as CSV or JSON. A ready dataset's id predicts its
images in place (the job's own dataset gives the job's assignments and stays the caller's); another
owner's is a 404, one of another kind a 422 naming dataset_id, a deleted one fails the prediction."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from integration_support import Services, create_key, digits_npz, small_spec, wait_for
from PIL import Image

from ruc_client import ApiError, AsyncClient, Client, poll_job

N_IMAGES = 300  # more than RUC_PREDICT_SYNC_MAX_IMAGES (256): the whole set takes the 202 route
SMALL = 120


def _npz(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images)
    return buf.getvalue()


@pytest.fixture(scope="module")
def job(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 1-epoch job on 300 digits, its images and the refined clusters of its assignments.csv."""
    content = digits_npz(n=N_IMAGES)
    images = np.load(io.BytesIO(content))["images"]
    t0 = time.monotonic()
    with Client(services.base_url, services.key) as client:
        ds = client.wait_dataset(client.upload_dataset(content, filename="digits.npz").id, timeout_s=90)
        assert ds.status == "ready", ds.reason
        t1 = time.monotonic()
        submitted = client.submit_job(small_spec(ds.id, epochs=1))
        done = client.wait(submitted.id, timeout_s=300, progress=False, updates=poll_job(interval_s=0.3))
        assert done.status == "succeeded", (done.error_code, done.error)
        timings = client.get_result(done.id)["timings"]
        print(f"dataset ready in {t1 - t0:.1f} s, job in {time.monotonic() - t1:.1f} s (stages: {timings})")
        names = {a.name for a in client.list_artifacts(done.id)}
        csv_path = client.download_artifact(
            done.id, "assignments.csv", tmp_path_factory.mktemp("a") / "a.csv"
        )
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    return {
        "id": done.id,
        "dataset_id": ds.id,
        "images": images,
        "refined": [int(r["refined_cluster"]) for r in rows],
        "artifacts": names,
    }


def test_the_jobs_own_images_get_its_assignments_at_once_and_through_202(
    services: Services, job: dict[str, Any]
) -> None:
    assert "model.onnx" in job["artifacts"], job["artifacts"]
    route = f"/v1/jobs/{job['id']}/predictions"
    with services.client() as http:
        t0 = time.monotonic()
        small = http.post(route, files={"file": ("small.npz", _npz(job["images"][:SMALL]))})
        sync_s = time.monotonic() - t0
        assert small.status_code == 200, small.text
        assert small.json()["assignments"] == job["refined"][:SMALL]
        t0 = time.monotonic()
        large = http.post(route, files={"file": ("all.npz", _npz(job["images"]))})
        accepted_s = time.monotonic() - t0
        assert large.status_code == 202, large.text
        assert large.json()["count"] == N_IMAGES and large.json()["assignments"] is None

        def finished() -> dict[str, Any] | None:
            body = http.get(large.headers["location"]).json()
            return body if body["status"] not in ("queued", "running") else None

        polled = wait_for(finished, 60, 0.2, "the large prediction")
        done_s = time.monotonic() - t0
    print(f"{SMALL} images answered in {sync_s:.2f} s (200)", end="; ")
    print(f"{N_IMAGES}: 202 after {accepted_s:.2f} s, succeeded after {done_s:.2f} s")
    assert polled["status"] == "succeeded", polled
    equal = np.mean(np.array(polled["assignments"]) == np.array(job["refined"]))
    print(f"predictions vs the job's assignments.csv: {equal:.3f} of {N_IMAGES} equal")
    assert polled["assignments"] == job["refined"]
    probs = np.array(polled["probabilities"])
    assert probs.shape == (N_IMAGES, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_ruc_client_predicts_both_routes_and_names_what_does_not_fit(
    services: Services, job: dict[str, Any], tmp_path: Path
) -> None:
    images = job["images"]
    archive = tmp_path / "few.zip"  # a folder archive: its count is known only once the worker reads it
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(20):
            png = io.BytesIO()
            Image.fromarray(images[i, :, :, 0], mode="L").save(png, format="PNG")
            zf.writestr(f"img/{i:02d}.png", png.getvalue())
    colour = tmp_path / "colour.zip"  # RGB images for a grey job: only the worker can tell
    with zipfile.ZipFile(colour, "w") as zf:
        for i in range(3):
            png = io.BytesIO()
            Image.new("RGB", (8, 8), (200, 20 * i, 0)).save(png, format="PNG")
            zf.writestr(f"{i}.png", png.getvalue())
    with Client(services.base_url, services.key) as client:
        few = client.predict(job["id"], archive)
        assert few.status == "succeeded" and few.count == 20
        assert few.assignments == job["refined"][:20]
        # Found by the API from the .npz header, then by the worker in the archive: both a 422.
        for file, name in ((_npz(np.zeros((4, 8, 8, 3), np.uint8)), "rgb.npz"), (colour, "colour.zip")):
            with pytest.raises(ApiError) as err:
                client.predict(job["id"], file, filename=name)
            assert err.value.status == 422 and [e.field for e in err.value.errors] == ["images"], name
            assert "3 channel(s) but the job's images have 1" in err.value.errors[0].problem

    async def every_image() -> Any:
        async with AsyncClient(services.base_url, services.key) as client:
            return await client.predict(job["id"], _npz(images), filename="all.npz", interval_s=0.2)

    whole = asyncio.run(every_image())  # 300 > 256 images: 202, then polled by the client
    assert whole.assignments == job["refined"] and len(whole.probabilities) == N_IMAGES
    with httpx.Client(base_url=services.base_url) as anonymous:
        assert anonymous.get(f"/v1/jobs/{job['id']}/predictions/{whole.id}").status_code == 401


def test_cli_predict_writes_csv_and_json_and_waits_only_when_asked(
    services: Services,
    job: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import main

    monkeypatch.setenv("RUC_API_URL", services.base_url)
    monkeypatch.setenv("RUC_API_KEY", services.key)
    few, every, rgb = tmp_path / "few.npz", tmp_path / "all.npz", tmp_path / "rgb.npz"
    few.write_bytes(_npz(job["images"][:SMALL]))
    every.write_bytes(_npz(job["images"]))
    rgb.write_bytes(_npz(np.zeros((4, 8, 8, 3), np.uint8)))
    predict = ["jobs", "predict", job["id"], "--images"]

    assert main([*predict, str(few), "--out", str(tmp_path / "few.csv")]) == 0  # answered at once (200)
    rows = list(csv.DictReader((tmp_path / "few.csv").read_text().splitlines()))
    clusters = [int(r["cluster"]) for r in rows]
    assert clusters == job["refined"][:SMALL] and [int(r["index"]) for r in rows] == list(range(SMALL))
    probs = np.array([[float(r[f"p{k}"]) for k in range(10)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and list(probs.argmax(1)) == clusters

    capsys.readouterr()
    assert main([*predict, str(every)]) == 0  # 300 > 256 images: a 202, not waited for
    said = capsys.readouterr().out
    assert said.startswith("prediction pred_") and said.split()[2] in ("queued", "running"), said
    assert main([*predict, str(every), "--wait", "--out", str(tmp_path / "all.json")]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["assignments"] == job["refined"]

    capsys.readouterr()
    assert main([*predict, str(rgb)]) == 1  # 3 channels for a grey job: one line, exit 1
    err = capsys.readouterr().err
    assert err.startswith("error: 422 validation-error: images: ") and err.count("\n") == 1, err


def test_a_ready_dataset_id_is_predicted_in_place(
    services: Services,
    job: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import main

    rng = np.random.default_rng(0)
    with (
        Client(services.base_url, services.key) as client,
        Client(services.base_url, create_key(services.database_url, "other-owner")) as other,
    ):
        # Uploaded first, validated while the job's own dataset is predicted.
        few = client.upload_dataset(_npz(job["images"][:SMALL]), filename="few.npz").id
        rgb = client.upload_dataset(
            _npz(rng.integers(0, 256, (12, 8, 8, 3), np.uint8)), filename="rgb.npz"
        ).id
        theirs = other.upload_dataset(_npz(job["images"][:SMALL]), filename="theirs.npz").id
        t0 = time.monotonic()
        queued = client.submit_prediction(job["id"], dataset_id=job["dataset_id"])  # 300 > 256 images
        accepted_s = time.monotonic() - t0
        assert queued.status in ("queued", "running") and queued.count == N_IMAGES, queued
        assert queued.dataset_id == job["dataset_id"]
        whole = client.wait_prediction(job["id"], queued, timeout_s=60, interval_s=0.2)
        done_s = time.monotonic() - t0
        assert whole.assignments == job["refined"] and len(whole.probabilities or []) == N_IMAGES
        assert client.get_dataset(job["dataset_id"]).status == "ready"  # read in place, never removed
        assert list(services.data_dir.rglob(f"datasets/{job['dataset_id']}/*")) != []

        for ds_id in (few, rgb):
            assert client.wait_dataset(ds_id, timeout_s=60).status == "ready"
        assert other.wait_dataset(theirs, timeout_s=60).status == "ready"
        t0 = time.monotonic()
        small = client.predict(job["id"], dataset_id=few)  # SMALL <= 256 images: answered at once (200)
        sync_s = time.monotonic() - t0
        assert small.count == SMALL and small.assignments == job["refined"][:SMALL]
        with pytest.raises(ApiError) as err:
            client.predict(job["id"], dataset_id=theirs)
        assert err.value.status == 404
        with pytest.raises(ApiError) as err:
            client.predict(job["id"], dataset_id=rgb)
        assert err.value.status == 422 and [e.field for e in err.value.errors] == ["dataset_id"]
        assert "3 channel(s) but the job's images have 1" in err.value.errors[0].problem

        async def async_predict() -> Any:
            async with AsyncClient(services.base_url, services.key) as aclient:
                return await aclient.predict(job["id"], dataset_id=few, interval_s=0.2)

        assert asyncio.run(async_predict()).assignments == job["refined"][:SMALL]
    with capsys.disabled():  # the figures, outside the capture the CLI's checks below read
        print(
            f"dataset id: {N_IMAGES} images 202 after {accepted_s:.2f} s, succeeded after {done_s:.2f} s; ",
            end="",
        )
        print(f"{SMALL} images answered in {sync_s:.2f} s (200)")

    monkeypatch.setenv("RUC_API_URL", services.base_url)
    monkeypatch.setenv("RUC_API_KEY", services.key)
    capsys.readouterr()
    assert main(["jobs", "predict", job["id"], "--dataset", few]) == 0
    assert json.loads(capsys.readouterr().out)["assignments"] == job["refined"][:SMALL]
    assert main(["jobs", "predict", job["id"], "--dataset", rgb]) == 1
    assert capsys.readouterr().err.startswith("error: 422 validation-error: dataset_id: ")


def test_a_dataset_deleted_while_its_prediction_is_queued_fails_it(
    services: Services, job: dict[str, Any], redis_url: str
) -> None:
    """The row the API inserts for a dataset id, queued, then the dataset deleted before the worker
    reads it: the worker ends the prediction failed (dataset_deleted), it is never stuck."""
    from api.queue import enqueue
    from service.db.crud import predictions as crud
    from service.db.models import Dataset, Job, new_id
    from service.db.session import session_scope
    from service.settings import Settings
    from service.task_names import TASK_PREDICT

    with Client(services.base_url, services.key) as client:
        ds = client.wait_dataset(
            client.upload_dataset(_npz(job["images"][:4]), filename="gone.npz").id, timeout_s=60
        )
        assert ds.status == "ready", ds.reason
        prediction_id = new_id("pred")
        with session_scope(services.database_url) as s:
            row = s.get(Dataset, ds.id)
            job_row = s.get(Job, job["id"])
            assert row is not None and job_row is not None
            crud.create_prediction(
                s,
                prediction_id=prediction_id,
                job_id=job["id"],
                owner_id=job_row.owner_id,
                filename=row.filename,
                size=row.size,
                sha256=row.sha256,
                path=row.path,
                count=4,
                dataset_id=ds.id,
            )
        client.delete_dataset(ds.id)
        settings = Settings(
            data_dir=services.data_dir, database_url=services.database_url, broker_url=redis_url
        )
        enqueue(settings, TASK_PREDICT, [prediction_id])

        def ended() -> Any:
            got = client.get_prediction(job["id"], prediction_id)
            return got if got.finished else None

        failed = wait_for(ended, 30, 0.2, "the prediction of a deleted dataset")
    assert failed.status == "failed" and failed.error_code == "dataset_deleted", failed
    assert failed.error == f"dataset {ds.id} was deleted before the prediction read it"
