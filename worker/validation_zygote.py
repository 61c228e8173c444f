"""A pre-imported process that forks one child per upload check.

Every check runs in a child of its own under limits (``worker.validation_sandbox``), and the readers
need torch: a fresh interpreter per check spends about 4 CPU-seconds importing it before reading a
byte, more than most checks take. The zygote is that interpreter started once per worker process
(``python -m worker.validation_zygote``): it imports the readers, then for each request forks a
child that sets its limits and runs the check, reaps it with ``wait4`` and answers with the child's
pid, exit status and CPU time. The child starts from the zygote's address space, as a fresh
interpreter would after its imports, so the limits still measure the check alone.

Protocol, one JSON object per line: the worker writes ``{"argv": [...], "stderr": PATH}``; the zygote
answers ``{"pid": N}`` once the child runs and ``{"status": S, "cpu": SECONDS}`` when it has ended
(S as ``os.waitstatus_to_exitcode``: negative for a signal). The zygote dies with the worker process
that started it and each child with the zygote (``PR_SET_PDEATHSIG``), so a SIGKILLed worker leaves
nothing behind. A zygote that dies is started again for the next check.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_POLL_SECONDS = 0.05


class ZygoteDied(Exception):
    """The zygote ended (or stopped answering) before reporting the child's end."""


class Zygote:
    """The worker side: one zygote process, started lazily, owned by the process that started it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0

    def _ensure(self) -> subprocess.Popen[bytes]:
        # A Celery pool process forked from a parent that had a zygote must not share its pipes.
        if self._proc is None or self._owner != os.getpid() or self._proc.poll() is not None:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "worker.validation_zygote", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                env=env,
            )
            self._owner = os.getpid()
        return self._proc

    def run(
        self,
        argv: list[str],
        stderr_path: Path,
        *,
        wall_seconds: float,
        heartbeat: Callable[[], None] | None,
        heartbeat_seconds: float,
    ) -> tuple[int | str, float]:
        """Run one check: (exit status or 'wall', CPU seconds). The zygote's start-up counts
        toward ``wall_seconds`` only once the child runs: a cold start is not the upload's fault."""
        proc = self._ensure()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"argv": argv, "stderr": str(stderr_path)}).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            self.close()
            raise ZygoteDied("could not reach the validation zygote") from exc
        reader = _LineReader(proc.stdout)
        started = pid = None
        beat = time.monotonic()
        timed_out = False
        try:
            while True:
                message = reader.poll(_POLL_SECONDS)
                if message is not None and "pid" in message:
                    pid, started = int(message["pid"]), time.monotonic()
                elif message is not None:
                    return ("wall" if timed_out else int(message["status"])), float(message["cpu"])
                now = time.monotonic()
                if pid is not None and started is not None and not timed_out and now - started > wall_seconds:
                    timed_out = True
                    _kill(pid)
                if heartbeat is not None and now - beat >= heartbeat_seconds:
                    beat = now
                    _beat(heartbeat)
        except ZygoteDied:
            self.close()
            raise
        except BaseException:
            # The caller is being torn down: the child must not outlive the check.
            if pid is not None:
                _kill(pid)
            self.close()
            raise

    def close(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
        self._proc = None


class _LineReader:
    """JSON lines from the zygote's stdout, read without blocking past ``timeout``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""

    def poll(self, timeout: float) -> dict[str, Any] | None:
        if b"\n" not in self._buffer:
            ready, _, _ = select.select([self._fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise ZygoteDied("the validation zygote ended")
            self._buffer += chunk
            if b"\n" not in self._buffer:
                return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _beat(heartbeat: Callable[[], None]) -> None:
    import logging

    try:
        heartbeat()
    except Exception:  # a missed renewal costs at most a duplicate delivery
        logging.getLogger(__name__).warning("validation heartbeat failed", exc_info=True)


_ZYGOTE = Zygote()


def shared_zygote() -> Zygote:
    """This process's zygote."""
    return _ZYGOTE


# --- the zygote process ---------------------------------------------------------------------------


def _serve_one(request: dict[str, Any]) -> None:
    from worker import validation_sandbox

    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: its own stdio, then the check; never back into the loop
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(err, 2)
            validation_sandbox.child_main([*request["argv"], str(zygote)])
            code = 0
        finally:
            os._exit(code)
    _answer({"pid": pid})
    _, status, usage = os.wait4(pid, 0)
    _answer({"status": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime})


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(parent: int) -> None:
    from worker import validation_sandbox

    validation_sandbox.die_with_parent(parent)
    validation_sandbox.preload_readers()
    for line in sys.stdin:
        if line.strip():
            _serve_one(json.loads(line))


if __name__ == "__main__":
    main(int(sys.argv[1]))
