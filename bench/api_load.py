"""API load benchmark: status-poll and job-submit throughput and latency, and upload memory.

Starts ``ruc-service api`` on a fresh Postgres database with Redis as the broker (no worker: submitted
jobs stay queued), drives it with ``wrk`` (``apt-get install -y wrk``), and prints:

- ``GET /v1/jobs/{id}`` (the poll path) and ``POST /v1/jobs`` (validate spec, insert, enqueue to
  Redis): requests/s, p50, p99 latency;
- the API process's resident memory while a 1 GiB file is uploaded, streamed from a generator (the
  upload path must stream to disk, so the peak should stay near the idle RSS, far below 1 GiB).

Usage: ``.venv/bin/python bench/api_load.py [--duration 10] [--connections 32] [--upload-gib 1]``.
Needs Postgres at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379 (db 14 is used
and flushed). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/14"
CHUNK = 1 << 20


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _parse_wrk(out: str) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) from ``wrk --latency`` output."""

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {p: ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "p50_ms": pct.get("50", float("nan")),
        "p99_ms": pct.get("99", float("nan")),
        "requests": float(total.group(1)) if total else float("nan"),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run_wrk(url: str, key: str, *, duration: int, connections: int, threads: int, script: str | None) -> str:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    argv += ["-H", f"Authorization: Bearer {key}"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def multipart_stream(total_bytes: int, boundary: str) -> Iterator[bytes]:
    """A multipart body with one ``file`` part of ``total_bytes`` zeros, produced 1 MiB at a time."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    block = b"\0" * CHUNK
    sent = 0
    while sent < total_bytes:
        n = min(CHUNK, total_bytes - sent)
        yield block[:n]
        sent += n
    yield f"\r\n--{boundary}--\r\n".encode()


def upload_rss(base: str, key: str, pid: int, size: int) -> dict[str, float]:
    """Peak and idle RSS (MiB) of the API process around a streamed upload of ``size`` bytes."""
    idle = _rss_kib(pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    boundary = uuid.uuid4().hex
    t0 = time.monotonic()
    resp = httpx.post(
        f"{base}/v1/datasets",
        content=multipart_stream(size, boundary),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        timeout=600,
    )
    elapsed = time.monotonic() - t0
    stop.set()
    t.join()
    if resp.status_code != 201:
        raise RuntimeError(f"upload answered {resp.status_code}: {resp.text[:300]}")
    return {
        "idle_mib": idle / 1024,
        "peak_mib": peak[0] / 1024,
        "seconds": elapsed,
        "mib_per_s": size / (1 << 20) / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--upload-gib", type=float, default=1.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    import psycopg
    import redis

    db = f"ruc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    redis.Redis.from_url(REDIS_URL).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="ruc-bench-"))
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update(
        {
            "RUC_DATABASE_URL": db_url,
            "RUC_BROKER_URL": REDIS_URL,
            "RUC_DATA_DIR": str(tmp),
            "RUC_LOG_LEVEL": "WARNING",
        }
    )
    api: subprocess.Popen[bytes] | None = None
    try:
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
                facts={
                    "count": 1797,
                    "height": 8,
                    "width": 8,
                    "channels": 1,
                    "has_labels": True,
                    "label_count": 10,
                },
            )
            s.add(ds)
            dataset_id = ds.id
        dispose_engines()
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "--log-level",
                "WARNING",
                "api",
                "--port",
                str(port),
                "--workers",
                str(args.api_workers),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise RuntimeError("API did not become ready")
            time.sleep(0.3)
        spec = {"dataset_id": dataset_id, "num_clusters": 10, "refine": {"epochs": 5}}
        headers = {"Authorization": f"Bearer {key}"}
        job_id = httpx.post(f"{base}/v1/jobs", json=spec, headers=headers).raise_for_status().json()["id"]

        print(
            f"ruc-service API on Postgres + Redis; {os.cpu_count()} CPU cores; "
            f"uvicorn workers={args.api_workers}; "
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
        )
        run_wrk(
            f"{base}/v1/jobs/{job_id}",
            key,
            duration=2,
            connections=args.connections,
            threads=args.threads,
            script=None,
        )  # warm-up (key cache, connection pool)
        poll = _parse_wrk(
            run_wrk(
                f"{base}/v1/jobs/{job_id}",
                key,
                duration=args.duration,
                connections=args.connections,
                threads=args.threads,
                script=None,
            )
        )
        lua = tmp / "submit.lua"
        lua.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(spec))}\n"
        )
        submit = _parse_wrk(
            run_wrk(
                f"{base}/v1/jobs",
                key,
                duration=args.duration,
                connections=args.connections,
                threads=args.threads,
                script=str(lua),
            )
        )
        print(f"{'endpoint':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}{'non-2xx':>9}")
        for name, r in (("GET /v1/jobs/{id}", poll), ("POST /v1/jobs", submit)):
            print(
                f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                f"{r['requests']:>10.0f}{r['non_2xx']:>9.0f}"
            )
        queued = redis.Redis.from_url(REDIS_URL).llen("gpu")
        print(f"jobs.run messages in the gpu queue after the submit run: {queued}")

        size = int(args.upload_gib * (1 << 30))
        server_pid = api.pid
        if args.api_workers > 1:
            print(
                "(RSS is measured on the supervisor only with --api-workers > 1; use 1 for the upload figure)"
            )
        up = upload_rss(base, key, server_pid, size)
        print(
            f"upload of {size / (1 << 30):.2f} GiB streamed from a generator: {up['seconds']:.1f} s "
            f"({up['mib_per_s']:.0f} MiB/s); API RSS idle {up['idle_mib']:.0f} MiB, "
            f"peak {up['peak_mib']:.0f} MiB "
            f"(+{up['peak_mib'] - up['idle_mib']:.0f} MiB)"
        )
        return 0
    finally:
        if api is not None:
            os.killpg(api.pid, signal.SIGTERM)
            try:
                api.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        redis.Redis.from_url(REDIS_URL).flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
