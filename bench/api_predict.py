"""The prediction path of ``bench/api_load.py --predict``: a real small job (the 1,797 digits,
small_cnn, a few RUC epochs) run by a real Celery worker on Redis, then ``POST
/v1/jobs/{id}/predictions`` of N inline images (an ``.npz``) from C concurrent clients for D seconds
each: images per second, requests per second, latency p50 / p99 (to the final answer: a 202 is polled
through its Location every 50 ms, and counted), and the p50 of the row's own finished_at - created_at
(insert to the worker's result: queue, model, write; the rest is the upload and the API's polling).
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import numpy as np
from api_stack import Stack, percentile

from cli.commands.demo import digits_npz
from ruc_client import Client

POLL_S = 0.05


def train(stack: Stack, epochs: int) -> tuple[str, np.ndarray, float]:
    """Upload the digits, run a small job to success; its id, the images, and the job's wall time."""
    content = digits_npz()
    images = np.load(io.BytesIO(content))["images"]
    spec = {
        "num_clusters": 10,
        "seed": 0,
        "base": {"backbone": "small_cnn"},
        "refine": {"epochs": epochs},
        "evaluate": {"attacks": [{"kind": "fgsm", "eps": [8 / 255]}], "attack_max_samples": 64},
    }
    with Client(stack.base, stack.key) as client:
        ds = client.wait_dataset(client.upload_dataset(content, filename="digits.npz").id, timeout_s=300)
        if ds.status != "ready":
            raise RuntimeError(f"dataset {ds.status}: {ds.reason}")
        t0 = time.monotonic()
        job = client.wait(client.submit_job({**spec, "dataset_id": ds.id}).id, timeout_s=1800, progress=False)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.status}: {job.error_code}: {job.error}")
        return job.id, images, time.monotonic() - t0


def npz(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images)
    return buf.getvalue()


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    in_db: list[float] = field(default_factory=list)  # the row's finished_at - created_at
    accepted_202: int = 0
    failed: int = 0


async def _one(http: httpx.AsyncClient, route: str, body: bytes, load: Load) -> None:
    t0 = time.monotonic()
    r = await http.post(route, files={"file": ("x.npz", body, "application/octet-stream")})
    if r.status_code == 202:
        load.accepted_202 += 1
        location = r.headers["location"]
        while r.status_code in (200, 202) and r.json()["status"] in ("queued", "running"):
            await asyncio.sleep(POLL_S)
            r = await http.get(location)
    body = r.json() if r.status_code == 200 else {}
    if body.get("status") != "succeeded":
        load.failed += 1
        return
    load.latencies.append(time.monotonic() - t0)
    made, ended = (datetime.fromisoformat(body[k]) for k in ("created_at", "finished_at"))
    load.in_db.append((ended - made).total_seconds())


async def drive(stack: Stack, job_id: str, body: bytes, clients: int, seconds: float) -> tuple[Load, float]:
    route = f"/v1/jobs/{job_id}/predictions"
    load = Load()

    async def client_loop(http: httpx.AsyncClient, deadline: float) -> None:
        while True:  # at least one request per client
            await _one(http, route, body, load)
            if time.monotonic() >= deadline:
                return

    async with httpx.AsyncClient(base_url=stack.base, headers=stack.headers, timeout=120) as http:
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*(client_loop(http, deadline) for _ in range(clients)))
        return load, time.monotonic() - t0


def run(
    stack: Stack, *, epochs: int, sizes: list[int], clients: list[int], seconds: float, predict_workers: int
) -> None:
    stack.start_worker("gpu,cpu")
    stack.start_worker("predict", concurrency=predict_workers)
    job_id, images, job_s = train(stack, epochs)
    print(f"job {job_id}: digits, small_cnn, {epochs} RUC epochs, succeeded in {job_s:.0f} s")
    for n in sizes:  # the first request of each size loads the model / warms the route
        cold, _ = asyncio.run(drive(stack, job_id, npz(images[:n]), 1, 0.0))
        print(f"first request of {n} image(s): {cold.latencies[0] * 1e3:.0f} ms")
    print(f"predict worker: {predict_workers} process(es), 1 torch thread each; {seconds:g} s per row")
    print(
        f"{'images':>7}{'clients':>8}{'requests':>9}{'req/s':>8}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'row p50':>9}{'202s':>6}{'failed':>7}"
    )
    for n in sizes:
        body = npz(images[np.arange(n) % len(images)])
        for c in clients:
            load, wall = asyncio.run(drive(stack, job_id, body, c, seconds))
            done = len(load.latencies)
            print(
                f"{n:>7}{c:>8}{done:>9}{done / wall:>8.1f}{done * n / wall:>10.0f}"
                f"{percentile(load.latencies, 50) * 1e3:>9.0f}{percentile(load.latencies, 99) * 1e3:>9.0f}"
                f"{percentile(load.in_db, 50) * 1e3:>9.0f}{load.accepted_202:>6}{load.failed:>7}"
            )
