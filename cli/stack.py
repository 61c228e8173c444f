"""The embedded stack: migrations on the configured DB, worker processes and the API as children.

Each child runs in its own process group (``start_new_session``) so that stopping it reaches the
Celery pool processes and uvicorn's workers too, and with ``PR_SET_PDEATHSIG`` so that a parent killed
by SIGKILL still takes its children with it. ``stop()`` sends SIGTERM to every group, waits
``STOP_GRACE_SECONDS``, then SIGKILLs what is left; a job cut off that way resumes from its epoch
checkpoint the next time a worker starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

# Celery's warm shutdown lets the running task finish; a long job would block Ctrl-C for minutes,
# so after this grace period the worker is killed and its job resumes later from its checkpoint.
STOP_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 90.0
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM us when the parent dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None


@dataclass
class EmbeddedStack:
    """API + a ``gpu``, a ``cpu`` and a ``predict`` worker, all sharing ``data_dir`` (SQLite +
    filesystem broker unless ``RUC_DATABASE_URL`` / ``RUC_BROKER_URL`` say otherwise)."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = None
    log_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        if self.data_dir is not None:
            env["RUC_DATA_DIR"] = str(Path(self.data_dir).resolve())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def apply_env(self) -> None:
        """Make this process's Settings agree with the children's (same data dir and URLs)."""
        from service.settings import get_settings

        for key, value in self.child_env().items():
            if key.startswith("RUC_"):
                os.environ[key] = value
        get_settings.cache_clear()

    def migrate(self) -> None:
        # Alembic logs a line per plugin (at import) and per revision at INFO; `up` and `demo` print
        # their own status, so quieten it before the import.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from service.db.migrate import upgrade_head
        from service.settings import get_settings

        settings = get_settings()
        settings.ensure_dirs()
        upgrade_head(settings.database_url)

    def create_key(self, name: str) -> str:
        from cli.commands.keys import create_key

        return create_key(name)[1]

    def start(self) -> None:
        self.apply_env()
        self.migrate()
        py = [sys.executable, "-m", "cli.main"]
        pid = os.getpid()
        # Separate workers for jobs, upload checks and predictions: a long job never delays a
        # dataset's `ready`, and a client waiting on a prediction waits behind neither.
        self.children = [
            Child("worker-gpu", [*py, "worker", "-Q", "gpu", "-c", "1", "-n", f"gpu-{pid}@%h"]),
            Child("worker-cpu", [*py, "worker", "-Q", "cpu", "-c", "1", "-n", f"cpu-{pid}@%h"]),
            Child("worker-predict", [*py, "worker", "-Q", "predict", "-c", "1", "-n", f"predict-{pid}@%h"]),
            Child("api", [*py, "api", "--host", self.host, "--port", str(self.port)]),
        ]
        env = self.child_env()
        if self.log_dir is not None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        for child in self.children:
            out: IO[bytes] | None = None
            if self.log_dir is not None:
                out = child.log = open(Path(self.log_dir) / f"{child.name}.log", "ab")  # noqa: SIM115
            child.proc = subprocess.Popen(
                child.argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.dead_child()
            if dead is not None and dead.proc is not None:
                raise RuntimeError(f"{dead.name} exited with code {dead.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"API not answering at {self.url}/healthz after {timeout:.0f} s")

    def dead_child(self) -> Child | None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                return child
        return None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every child's process group, wait up to ``grace`` s, SIGKILL what is left."""
        for child in self.children:
            if child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The group may outlive its leader (Celery pool processes): always sweep it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)
            if child.log is not None:
                child.log.close()
