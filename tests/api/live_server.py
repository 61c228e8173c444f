"""A real API server for the tests that need real HTTP: ``ruc-service api`` (uvicorn) as a subprocess
in its own process group, and its resident memory read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class LiveServer:
    base_url: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def rss_peak(pid: int, interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Samples the process's RSS in a thread while the block runs: ``{"before", "peak"}`` in bytes."""
    out = {"before": rss_bytes(pid), "peak": 0}
    out["peak"] = out["before"]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                out["peak"] = max(out["peak"], rss_bytes(pid))
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(OSError, RuntimeError):
            out["peak"] = max(out["peak"], rss_bytes(pid))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(env_overrides: dict[str, str], log_dir: Path) -> Iterator[LiveServer]:
    """Start the API on a free port with ``RUC_*`` from ``env_overrides``; stop its group afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env_overrides})
    port = _free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"api-{port}.log"
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", popen, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"API died:\n{server.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"API not up after 60 s:\n{server.log()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=5)
