"""API load benchmark: status-poll and job-submit throughput and latency, upload memory, event streams
and synchronous predictions.

Starts ``ruc-service api`` on a fresh Postgres database with Redis as the broker (``bench/api_stack.py``)
and, by default (no worker: submitted jobs stay queued), drives it with ``wrk`` (``apt-get install -y
wrk``) and prints:

- ``GET /v1/jobs/{id}`` (the poll path) and ``POST /v1/jobs`` (validate spec, insert, enqueue to
  Redis): requests/s, p50, p99 latency;
- the API process's resident memory while a 1 GiB file is uploaded, streamed from a generator (the
  upload path must stream to disk, so the peak should stay near the idle RSS, far below 1 GiB).

``--sse`` instead measures ``GET /v1/jobs/{id}/events/stream`` under S concurrent streams
(``bench/api_sse.py``); ``--predict`` runs a real small job on a real worker, then measures
synchronous predictions (``bench/api_predict.py``).

Usage: ``.venv/bin/python bench/api_load.py [--duration 10] [--connections 32] [--upload-gib 1]``,
``... --sse [--streams 50,200]``, ``... --predict [--sizes 1,16,256] [--clients 1,4]``.
Needs Postgres at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379 (db 9 is used
and flushed). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
from api_stack import REDIS_URL, Stack, load_average, rss_kib, stack

CHUNK = 1 << 20


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
    idle = rss_kib(pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
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


def wrk_paths(st: Stack, args: argparse.Namespace) -> None:
    """Status poll and submit under wrk, then the streamed upload's RSS."""
    import redis

    spec = {"dataset_id": st.dataset_id, "num_clusters": 10, "refine": {"epochs": 5}}
    job_id = httpx.post(f"{st.base}/v1/jobs", json=spec, headers=st.headers).raise_for_status().json()["id"]
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s")
    wrk = {"duration": args.duration, "connections": args.connections, "threads": args.threads}
    # warm-up (key cache, connection pool)
    run_wrk(f"{st.base}/v1/jobs/{job_id}", st.key, **{**wrk, "duration": 2}, script=None)
    poll = _parse_wrk(run_wrk(f"{st.base}/v1/jobs/{job_id}", st.key, **wrk, script=None))
    lua = st.data_dir / "submit.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(spec))}\n"
    )
    submit = _parse_wrk(run_wrk(f"{st.base}/v1/jobs", st.key, **wrk, script=str(lua)))
    print(f"{'endpoint':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}{'non-2xx':>9}")
    for name, r in (("GET /v1/jobs/{id}", poll), ("POST /v1/jobs", submit)):
        print(
            f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['requests']:>10.0f}{r['non_2xx']:>9.0f}"
        )
    queued = redis.Redis.from_url(REDIS_URL).llen("gpu")
    print(f"jobs.run messages in the gpu queue after the submit run: {queued}")
    size = int(args.upload_gib * (1 << 30))
    if args.api_workers > 1:
        print("(RSS is measured on the supervisor only with --api-workers > 1; use 1 for the upload figure)")
    up = upload_rss(st.base, st.key, st.api.pid, size)
    print(
        f"upload of {size / (1 << 30):.2f} GiB streamed from a generator: {up['seconds']:.1f} s "
        f"({up['mib_per_s']:.0f} MiB/s); API RSS idle {up['idle_mib']:.0f} MiB, "
        f"peak {up['peak_mib']:.0f} MiB "
        f"(+{up['peak_mib'] - up['idle_mib']:.0f} MiB)"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run / prediction row")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--upload-gib", type=float, default=1.0)
    path = parser.add_mutually_exclusive_group()
    path.add_argument("--sse", action="store_true", help="the event stream instead of the wrk paths")
    path.add_argument("--predict", action="store_true", help="synchronous predictions instead")
    parser.add_argument("--streams", type=_ints, default=[50, 200], help="--sse: concurrent streams")
    parser.add_argument("--events", type=int, default=1000, help="--sse: events replayed per stream")
    parser.add_argument("--rate", type=float, default=10.0, help="--sse: events/s written while held")
    parser.add_argument("--sizes", type=_ints, default=[1, 16, 256], help="--predict: images per request")
    parser.add_argument("--clients", type=_ints, default=[1, 4], help="--predict: concurrent clients")
    parser.add_argument("--epochs", type=int, default=3, help="--predict: RUC epochs of the job")
    parser.add_argument("--predict-workers", type=int, default=1, help="--predict: worker processes")
    args = parser.parse_args()
    if not (args.sse or args.predict) and shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    if (args.sse or args.predict) and args.api_workers != 1:
        print("(RSS figures are of the supervisor only with --api-workers > 1)")
    with stack(api_workers=args.api_workers) as st:
        print(
            f"ruc-service API on Postgres + Redis; {os.cpu_count()} CPU cores; "
            f"uvicorn workers={args.api_workers}; load average at the start {load_average()}"
        )
        if args.sse:
            import api_sse

            api_sse.run(st, args.streams, events=args.events, rate=args.rate, seconds=args.duration)
        elif args.predict:
            import api_predict

            api_predict.run(
                st,
                epochs=args.epochs,
                sizes=args.sizes,
                clients=args.clients,
                seconds=args.duration,
                predict_workers=args.predict_workers,
            )
        else:
            wrk_paths(st, args)
        print(f"load average at the end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
