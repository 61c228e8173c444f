"""The service stack the API benchmarks drive: a fresh Postgres database, a Redis database number of
the bench's own, ``ruc-service api`` and, when asked, ``ruc-service worker`` processes; all removed on
exit. Used by ``bench/api_load.py`` (run that, not this)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Not 10-15: the integration suite takes 10 + pid % 6, and this database is flushed.
REDIS_URL = "redis://127.0.0.1:6379/9"
DIGITS_FACTS = {"count": 1797, "height": 8, "width": 8, "channels": 1, "has_labels": True, "label_count": 10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Stack:
    """A running API on its own database; ``key`` is an API key, ``dataset_id`` a ready row whose facts
    are the digits' (its file is absent: jobs submitted on it are only queued, never run)."""

    base: str
    key: str
    owner_id: str
    db_url: str
    data_dir: Path
    env: dict[str, str]
    dataset_id: str
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start_worker(self, queues: str, concurrency: int = 1) -> None:
        argv = [sys.executable, "-m", "cli.main", "--log-level", "WARNING", "worker"]
        argv += ["-Q", queues, "-c", str(concurrency), "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"]
        self.workers.append(_spawn(argv, self.env, self.data_dir / f"worker-{len(self.workers)}.log"))


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _seed(db_url: str) -> tuple[str, str, str]:
    """Migrate, then an API key (plaintext, owner id) and a ready dataset row with the digits' facts."""
    from service.db.crud import api_keys
    from service.db.migrate import upgrade_head
    from service.db.models import Dataset, new_id
    from service.db.session import dispose_engines, session_scope

    upgrade_head(db_url)
    with session_scope(db_url) as s:
        key_row, key = api_keys.create_key(s, "bench")
        ds = Dataset(
            id=new_id("ds"),
            owner_id=key_row.id,
            filename="bench.npz",
            size=1,
            sha256="0" * 64,
            path="datasets/bench/data.npz",
            status="ready",
            facts=dict(DIGITS_FACTS),
        )
        s.add(ds)
        dataset_id, owner_id = ds.id, key_row.id
    dispose_engines()
    return key, owner_id, dataset_id


def _wait_ready(base: str, api: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or api.poll() is not None:
            raise RuntimeError(f"API did not become ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def stack(*, api_workers: int = 1, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Postgres database + Redis db 9 + the API with ``api_workers`` uvicorn processes."""
    import psycopg
    import redis

    db = f"ruc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="ruc-bench-"))
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update(
        {
            "RUC_DATABASE_URL": db_url,
            "RUC_BROKER_URL": REDIS_URL,
            "RUC_DATA_DIR": str(tmp),
            "RUC_LOG_LEVEL": "WARNING",
            # Throughput, not quotas: the submit run queues thousands of jobs under one key.
            "RUC_QUOTA_ACTIVE_JOBS": "0",
            "RUC_QUOTA_UPLOADS_PER_HOUR": "0",
            "PYTHONPATH": str(REPO),
            # The machine is shared: one intra-op thread per worker process.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            **(extra_env or {}),
        }
    )
    running: Stack | None = None
    try:
        key, owner_id, dataset_id = _seed(db_url)
        port = free_port()
        argv = [sys.executable, "-m", "cli.main", "--log-level", "WARNING", "api"]
        argv += ["--port", str(port), "--workers", str(api_workers)]
        api = _spawn(argv, env, tmp / "api.log")
        running = Stack(f"http://127.0.0.1:{port}", key, owner_id, db_url, tmp, env, dataset_id, api)
        _wait_ready(running.base, api, tmp / "api.log")
        yield running
    finally:
        if running is not None:
            for proc in [*running.workers, running.api]:
                _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        broker.flushdb()
        from service.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
