"""Helpers of the integration suite: the API and Celery workers as subprocesses in their own process
groups (so a test can SIGKILL a whole worker, pool included), service env, digits npz, polling."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("RUC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("RUC_TEST_REDIS", "redis://127.0.0.1:6379")
# Short leases make worker loss visible within seconds instead of a minute.
TEST_LEASE_SECONDS = 5
TEST_HEARTBEAT_SECONDS = 1


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def _redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_HOST + "/0", socket_timeout=3).ping())
    except Exception:
        return False


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """SQLAlchemy URL of a new, migrated database, dropped on exit."""
    if not _pg_available():
        pytest.fail(f"Postgres not reachable at {PG_ADMIN_URL} (run .ci/run, which starts it)")
    import psycopg

    name = f"ruc_it_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    from service.db.migrate import upgrade_head

    upgrade_head(url)
    try:
        yield url
    finally:
        from service.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def service_env(data_dir: Path, database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update(
        {
            "RUC_DATA_DIR": str(data_dir),
            "RUC_DATABASE_URL": database_url,
            "RUC_BROKER_URL": broker_url,
            "RUC_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
            "RUC_HEARTBEAT_SECONDS": str(TEST_HEARTBEAT_SECONDS),
            "RUC_WEBHOOK_SECRET": "test-secret",
            # Test receivers listen on loopback, which callbacks may reach only when allow-listed.
            "RUC_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "RUC_WEBHOOK_RETRY_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
            # 2 cores are shared by the API, two workers and pytest: one intra-op thread each.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class Proc:
    """A subprocess in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        self.kill_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        self.kill_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    out = open(log_path, "wb")  # noqa: SIM115 - handed to the child; closed with the process
    popen = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    out.close()
    return Proc(name, popen, log_path)


CLI = [sys.executable, "-m", "cli.main"]


def free_port() -> int:
    from cli.stack import free_port as fp

    return fp()


def wait_http_ok(url: str, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} died:\n{proc.log()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not OK after {timeout} s" + (f"\n{proc.log()[-4000:]}" if proc else ""))


@dataclass
class Services:
    """API + gpu, cpu and predict workers on Postgres + Redis, plus an API key."""

    env: dict[str, str]
    data_dir: Path
    log_dir: Path
    database_url: str
    base_url: str = ""
    api: Proc | None = None
    workers: dict[str, Proc] = field(default_factory=dict)
    key: str = ""

    def start_api(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.api = spawn("api", [*CLI, "api", "--port", str(port)], self.env, self.log_dir)
        wait_http_ok(f"{self.base_url}/healthz", 60, self.api)

    def start_worker(self, queue: str) -> Proc:
        name = f"{queue}-{uuid.uuid4().hex[:6]}@%h"
        proc = spawn(
            f"worker-{queue}", [*CLI, "worker", "-Q", queue, "-c", "1", "-n", name], self.env, self.log_dir
        )
        self.workers[queue] = proc
        return proc

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def stop(self) -> None:
        for proc in [*self.workers.values(), *([self.api] if self.api else [])]:
            proc.stop()


def create_key(database_url: str, name: str = "integration") -> str:
    from service.db.crud import api_keys
    from service.db.session import session_scope

    with session_scope(database_url) as s:
        return api_keys.create_key(s, name)[1]


def digits_npz(*, with_labels: bool = True, n: int | None = None) -> bytes:
    """scikit-learn's 8x8 digits as the service's npz format: images uint8 (N, 8, 8, 1), labels int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    if n is not None:
        images, labels = images[:n], labels[:n]
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"images": images}
    if with_labels:
        arrays["labels"] = labels
    np.savez(buf, **arrays)
    return buf.getvalue()


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it returns a truthy value; returns that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def small_spec(
    dataset_id: str, *, epochs: int, batch_size: int = 128, confidence_threshold: float = 0.9
) -> dict[str, Any]:
    """A digits job of a few seconds per stage on one CPU core."""
    return {
        "dataset_id": dataset_id,
        "num_clusters": 10,
        "seed": 0,
        "base": {
            "method": "kmeans",
            "backbone": "small_cnn",
            "fit_epochs": 2,
            "kmeans_restarts": 1,
            "pca_dim": 20,
        },
        "refine": {
            "strategy": "confidence",
            "confidence_threshold": confidence_threshold,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": 0.05,
            "lambda_u_rampup_epochs": max(epochs, 1),
        },
        "evaluate": {
            "attacks": [{"kind": "fgsm", "eps": [8 / 255]}, {"kind": "bim", "eps": [8 / 255], "steps": 2}],
            "attack_max_samples": 64,
        },
    }


def upload(client: httpx.Client, route: str, name: str, content: bytes) -> dict[str, Any]:
    resp = client.post(route, files={"file": (name, content, "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_upload(client: httpx.Client, route: str, row: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        cur = client.get(f"{route}/{row['id']}").json()
        return cur if cur["status"] != "validating" else None

    return wait_for(done, timeout, 0.3, f"validation of {row['id']}")


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def job_event_rows(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job, oldest first (all pages)."""
    out: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if after is not None:
            params["after"] = after
        page = client.get(f"/v1/jobs/{job_id}/events", params=params).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["next_after"]


def job_events(client: httpx.Client, job_id: str) -> list[str]:
    """Every event message of a job, oldest first."""
    return [e["message"] for e in job_event_rows(client, job_id)]


def wait_job_finished(
    client: httpx.Client, job_id: str, timeout: float, interval: float = 0.3
) -> dict[str, Any]:
    """The job once it left queued/running (succeeded, failed or cancelled)."""

    def finished() -> dict[str, Any] | None:
        job = get_job(client, job_id)
        return job if job["status"] not in ("queued", "running") else None

    return wait_for(finished, timeout, interval, f"job {job_id} to finish")
