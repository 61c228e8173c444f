"""Helpers of the reliability tests: a private Redis server, the API alone as a subprocess, uploads
made ready without a worker, and the load generator (one OS process's burst of concurrent submits).

Reuses the integration suite's process helpers (``integration_support``) and the API suite's
``mark_ready`` (tests/reliability/conftest.py puts their folders on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from api_support import mark_ready, npz_bytes
from integration_support import (
    Services,
    create_key,
    free_port,
    fresh_database,
    service_env,
    spawn,
    upload,
    wait_for,
)

from service.db.models import Checkpoint, Dataset
from service.settings import Settings

__all__ = [
    "Services",
    "api_only",
    "fresh_database",
    "job_body",
    "private_redis",
    "queued_task_args",
    "ready_checkpoint",
    "ready_dataset",
    "run_bursts",
    "service_env",
]

# The facts validation would record for npz_bytes(6): six 4x4 grey images.
SMALL_FACTS = {"count": 6, "height": 4, "width": 4, "channels": 1, "has_labels": False}


@contextlib.contextmanager
def private_redis(work_dir: Path) -> Iterator[str]:
    """A redis-server of this test's own on a free port, nothing persisted; its URL (database 0)."""
    import redis

    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = spawn("redis", [*argv, "--dir", str(work_dir)], {}, work_dir)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=2)

    def up() -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(client.ping())
        return False

    try:
        wait_for(up, 20, 0.1, f"redis-server on port {port}\n{proc.log()}")
        yield url
    finally:
        client.close()
        proc.stop(grace=5)


@contextlib.contextmanager
def api_only(env: dict[str, str], data_dir: Path, database_url: str) -> Iterator[Services]:
    """The API as a subprocess (no worker: submitted jobs stay queued) with an API key."""
    svc = Services(env=env, data_dir=data_dir, log_dir=data_dir / "logs", database_url=database_url)
    svc.key = create_key(database_url, "reliability")
    try:
        svc.start_api()
        yield svc
    finally:
        svc.stop()


def ready_dataset(svc: Services, facts: dict[str, Any] | None = None) -> str:
    """A dataset uploaded over HTTP and marked ready as the validation task would mark it, with the
    facts of the upload (``SMALL_FACTS``) or others: nothing reads the file without a worker."""
    with svc.client() as client:
        row = upload(client, "/v1/datasets", "small.npz", npz_bytes(SMALL_FACTS["count"]))
    mark_ready(_settings(svc), Dataset, row["id"], facts=facts or SMALL_FACTS)
    return str(row["id"])


def ready_checkpoint(svc: Services, kind: str, info: dict[str, Any]) -> str:
    """A checkpoint uploaded over HTTP and marked ready with the ``kind`` and ``info`` validation finds."""
    with svc.client() as client:
        row = upload(client, "/v1/checkpoints", f"{kind}.pt", b"weights")
    mark_ready(_settings(svc), Checkpoint, row["id"], kind=kind, info=info)
    return str(row["id"])


def _settings(svc: Services) -> Settings:
    return Settings(data_dir=svc.data_dir, database_url=svc.database_url)


def job_body(dataset_id: str, index: int) -> dict[str, Any]:
    """A small valid spec, distinct per idempotency key (its seed), the same for every copy of one."""
    return {"dataset_id": dataset_id, "num_clusters": 2, "seed": index}


Answer = tuple[str, int, str | None, bool, float]  # key, status, job id, replayed, latency (s)


def run_bursts(
    base_url: str, api_key: str, dataset_id: str, plan: list[list[tuple[str, int]]]
) -> tuple[list[Answer], float]:
    """One OS process per entry of ``plan``, each submitting all its (key, index) pairs at once, one
    connection each; all start together (a barrier). Returns every answer and the wall time from the
    start to the last answer. Status 0: no answer within the client's timeout.

    Forked, not spawned: a spawned child re-imports the test's modules, seconds per process on a loaded
    2-core machine, which smeared the start; a forked one only runs httpx and asyncio."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(plan) + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_burst_process, args=(base_url, api_key, dataset_id, keys, barrier, results))
        for keys in plan
    ]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=60)
    started = time.perf_counter()
    answers: list[Answer] = []
    for _ in procs:
        answers.extend(results.get(timeout=300))
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join(timeout=30)
    return answers, wall


def _burst_process(
    base_url: str,
    api_key: str,
    dataset_id: str,
    keys: list[tuple[str, int]],
    barrier: Any,
    results: Any,
) -> None:
    results.put(asyncio.run(_burst(base_url, api_key, dataset_id, keys, barrier)))


async def _burst(
    base_url: str, api_key: str, dataset_id: str, keys: list[tuple[str, int]], barrier: Any
) -> list[Answer]:
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as client:

        async def one(key: str, index: int) -> Answer:
            t0 = time.perf_counter()
            try:
                resp = await client.post(
                    "/v1/jobs", json=job_body(dataset_id, index), headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:  # no answer (timeout, reset): status 0 in the histogram
                return key, 0, None, False, time.perf_counter() - t0
            latency = time.perf_counter() - t0
            job_id = resp.json().get("id") if resp.headers.get("content-type") == "application/json" else None
            replayed = resp.headers.get("Idempotent-Replayed") == "true"
            return key, resp.status_code, job_id, replayed, latency

        barrier.wait(timeout=60)
        return await asyncio.gather(*(one(key, index) for key, index in keys))


def queued_task_args(redis_url: str, queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in a Redis broker's ``queue`` (kombu's JSON envelope)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        # kombu keeps one list per priority step: the queue's name, then name + separator + step.
        names = [n for n in client.keys(f"{queue}*") if client.type(n) == b"list"]
        raw = [m for name in names for m in client.lrange(name, 0, -1)]
    finally:
        client.close()
    out = []
    for item in raw:
        message = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args))
    return out
