"""ruc_client and the CLI's HTTP commands against the real API + Celery workers (Postgres, Redis): one
small job uploaded, run, followed, read and downloaded with checksums; retried submits make one job."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration_support import CLI, REPO, Services, digits_npz, small_spec

from ruc_client import ApiError, AsyncClient, ChecksumError, Client, Dataset, Job

N_IMAGES = 400
# A 2-epoch small CNN base on 400 digits reaches about 0.33 accuracy (chance: 0.1).


@pytest.fixture(scope="module")
def client(services: Services) -> Any:
    with Client(services.base_url, services.key) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(client: Client) -> Dataset:
    content = digits_npz(n=N_IMAGES)
    row = client.upload_dataset(content, filename="digits.npz")
    assert row.sha256 == hashlib.sha256(content).hexdigest() and row.size == len(content)
    ready = client.wait_dataset(row.id, timeout_s=90)
    assert ready.status == "ready", ready.reason
    assert ready.facts is not None and ready.facts["count"] == N_IMAGES
    return ready


@pytest.fixture(scope="module")
def finished_job(client: Client, dataset: Dataset) -> Job:
    job = client.submit_job(small_spec(dataset.id, epochs=1))
    seen: list[Job] = []

    def recording(c: Client, job_id: str) -> Any:
        from ruc_client import poll_job

        for snapshot in poll_job(interval_s=0.3)(c, job_id):
            seen.append(snapshot)
            yield snapshot

    final = client.wait(job.id, timeout_s=240, progress=False, updates=recording)
    assert final.status == "succeeded", (final.error_code, final.error)
    assert seen[-1] == final and final.progress == 1.0 and final.epoch == final.total_epochs == 1
    return final


def test_result_events_metrics_and_verified_downloads(
    client: Client, finished_job: Job, tmp_path: Path
) -> None:
    result = client.get_result(finished_job.id)
    assert result["base"]["acc"] > 0.2 and 0.0 <= result["refined"]["acc"] <= 1.0
    paged = list(client.iter_events(finished_job.id, page_size=2))
    assert len(paged) >= 3 and [e.id for e in paged] == sorted({e.id for e in paged})
    assert paged == client.list_events(finished_job.id, limit=100).data
    assert client.get_metrics(finished_job.id).epochs == [1]
    assert finished_job.id in {j.id for j in client.iter_jobs(page_size=1)}
    artifacts = {a.name: a for a in client.list_artifacts(finished_job.id)}
    assert {"assignments.csv", "result.json"} <= set(artifacts)
    for name, artifact in artifacts.items():
        path = client.download_artifact(finished_job.id, name, tmp_path / name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
        assert path.stat().st_size == artifact.size
    assert len((tmp_path / "assignments.csv").read_text().splitlines()) == N_IMAGES + 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["refined"]["acc"] == result["refined"]["acc"] and saved["base"] == result["base"]


def test_async_client_reads_the_same_job(services: Services, finished_job: Job, tmp_path: Path) -> None:
    async def go() -> tuple[Job, Path]:
        async with AsyncClient(services.base_url, services.key) as ac:
            job = await ac.wait(finished_job.id, progress=False)
            path = await ac.download_artifact(finished_job.id, "result.json", tmp_path / "r.json")
            return job, path

    job, path = asyncio.run(go())
    assert job == Client(services.base_url, services.key).get_job(finished_job.id)
    assert json.loads(path.read_text())["base"]["acc"] > 0.2


class DropFirstJobResponse(httpx.HTTPTransport):
    """The first ``POST /v1/jobs`` reaches the server and commits; its answer is then lost, as when
    the connection breaks after the server wrote it."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs" and not self.dropped:
            response.read()
            self.dropped.append(response.json())
            response.close()
            raise httpx.RemoteProtocolError("connection closed before the response", request=request)
        return response


def test_submit_retried_after_a_lost_answer_returns_the_committed_job(
    services: Services, dataset: Dataset
) -> None:
    transport = DropFirstJobResponse()
    with Client(services.base_url, services.key, transport=transport) as c:
        before = {j.id for j in c.iter_jobs()}
        job = c.submit_job(small_spec(dataset.id, epochs=1, confidence_threshold=0.8))
        c.cancel_job(job.id)
        new = {j.id for j in c.iter_jobs()} - before
        again = c.submit_job(small_spec(dataset.id, epochs=2), idempotency_key="client-test-key")
        assert c.submit_job(small_spec(dataset.id, epochs=2), idempotency_key="client-test-key") == again
        c.cancel_job(again.id)
    assert transport.dropped and transport.dropped[0]["id"] == job.id
    assert new == {job.id}


def test_api_error_carries_the_problem_fields(client: Client, dataset: Dataset) -> None:
    spec = small_spec(dataset.id, epochs=1)
    spec["refine"]["lr"] = -1
    with pytest.raises(ApiError) as caught:
        client.submit_job(spec)
    err = caught.value
    assert (err.status, err.code, err.type, err.title) == (
        422,
        "validation-error",
        "/problems/validation-error",
        "Invalid request",
    )
    assert [e.field for e in err.errors] == ["refine.lr"] and "refine.lr" in err.detail
    with pytest.raises(ApiError) as missing:
        client.get_job("job_01jd5x5c9p2z6mbvyktq65jv87")
    assert (missing.value.status, missing.value.code) == (404, "not-found")


def _cli(services: Services, *args: str, key: str | None = None, cwd: Path = REPO) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update(RUC_API_URL=services.base_url, RUC_API_KEY=services.key if key is None else key)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_upload_result_artifacts_and_errors(
    services: Services, finished_job: Job, tmp_path: Path
) -> None:
    npz = tmp_path / "few.npz"
    npz.write_bytes(digits_npz(n=64))
    up = _cli(services, "datasets", "upload", str(npz), "--wait")
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines()[-1].startswith("ds_") and "sha256" in up.stdout
    watch = _cli(services, "jobs", "watch", finished_job.id)
    assert watch.returncode == 0 and f"job {finished_job.id} succeeded" in watch.stdout
    result = _cli(services, "jobs", "result", finished_job.id)
    assert json.loads(result.stdout)["base"]["acc"] > 0.2
    listing = _cli(services, "jobs", "artifacts", finished_job.id)
    assert "assignments.csv" in listing.stdout
    got = _cli(services, "jobs", "artifacts", finished_job.id, "--get", "assignments.csv", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert len((tmp_path / "assignments.csv").read_text().splitlines()) == N_IMAGES + 1
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"dataset_id": "ds_x", "num_clusters": 0}))
    bad = _cli(services, "jobs", "submit", str(spec))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: 422 validation-error:") and "num_clusters" in bad.stderr
    nokey = _cli(services, "jobs", "result", finished_job.id, key="")
    assert nokey.returncode == 1 and nokey.stderr.strip().endswith("(ruc-service keys create NAME)")


def test_download_of_a_changed_artifact_fails_and_leaves_nothing(
    client: Client, services: Services, finished_job: Job, tmp_path: Path
) -> None:
    stored = [p for p in services.data_dir.rglob("result.json") if finished_job.id in str(p)]
    assert len(stored) == 1, stored
    stored[0].write_bytes(stored[0].read_bytes().replace(b"refined", b"REFINED", 1))
    with pytest.raises(ChecksumError):
        client.download_artifact(finished_job.id, "result.json", tmp_path / "result.json")
    assert list(tmp_path.iterdir()) == []
