"""Start and stop the ranks of one job: rank 0 is the calling process, ranks 1..N-1 are children.

Children are started with ``subprocess`` (``python -m core.distributed.follower``), never forked:
the caller may be a Celery pool process with threads and open connections. Ranks meet through a
FileStore in a private temporary folder (no port to pick or to collide on), with gloo on CPUs and
NCCL on CUDA devices. Each child's output goes to a log file whose tail is quoted when it fails.

Failure handling: a rank that dies makes the others fail at their next collective (gloo notices a
closed peer at once; any backend gives up after ``timeout_s``); children also die with the
caller (PR_SET_PDEATHSIG) and poll for its disappearance while idle. When the body of
``launched`` raises, the children are killed and the error propagates, so the job's normal
retry and resume take over: a ``RankLost`` is handled by the worker like a lost worker (the
attempt stores nothing, the lease lapses, the job is re-queued and resumes from its checkpoint).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from core.distributed.commands import STOP, Session, post, set_session
from core.errors import CoreInputError, RankLost

DEFAULT_TIMEOUT_S = 600.0  # longer than rank 0's longest pause inside training (a checkpoint write)
STOP_GRACE_S = 30.0  # followers leave within this after STOP before they are killed


def parse_devices(text: str) -> list[torch.device]:
    """``cuda:0,cuda:1`` | ``all`` (every visible GPU) | ``cpu:N`` (N CPU ranks, gloo) | one device."""
    text = text.strip()
    if text == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise CoreInputError("devices", "'all' asks for every GPU, but none is visible")
        return [torch.device("cuda", i) for i in range(n)]
    if text.startswith("cpu:"):
        count = int(text.removeprefix("cpu:"))
        if count < 1:
            raise CoreInputError("devices", f"cpu:N needs N >= 1, got {count}")
        return [torch.device("cpu")] * count
    devices = [torch.device(d.strip()) for d in text.split(",") if d.strip()]
    if not devices:
        raise CoreInputError("devices", "no device named")
    kinds = {d.type for d in devices}
    if len(kinds) > 1:
        raise CoreInputError("devices", f"one kind of device per job, got {sorted(kinds)}")
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda and len({d.index for d in cuda}) != len(cuda):
        raise CoreInputError("devices", "a GPU named twice (NCCL needs one rank per GPU)")
    return devices


def _backend(devices: list[torch.device]) -> str:
    return "nccl" if devices[0].type == "cuda" else "gloo"


def _spawn(rank: int, world: int, dev: torch.device, store: Path, timeout_s: float, threads: int, log: Path):
    cmd = [
        sys.executable,
        "-m",
        "core.distributed.follower",
        f"--store={store}",
        f"--rank={rank}",
        f"--world={world}",
        f"--device={dev}",
        f"--backend={_backend([dev])}",
        f"--timeout={timeout_s}",
        f"--threads={threads}",
        f"--parent={os.getpid()}",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _kill(children: list[subprocess.Popen]) -> None:
    for p in children:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in children:
        p.wait()


def init_rank(store_path: Path, rank: int, world: int, dev: torch.device, timeout_s: float) -> Session:
    """Join the process group of ``world`` ranks as ``rank`` and open the command session."""
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    store = dist.FileStore(str(store_path), world)
    dist.init_process_group(
        _backend([dev]), store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    session = Session(store=store, device=dev)
    set_session(session)
    return session


def close_rank() -> None:
    set_session(None)
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def launched(devices: list[torch.device], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[torch.device]:
    """Run the body as rank 0 of ``len(devices)`` ranks; yields rank 0's device.

    A single device starts nothing. On CPUs each rank gets an equal share of this process's
    torch threads (restored afterwards) so that N ranks do not oversubscribe the cores.
    """
    if len(devices) == 1:
        yield devices[0]
        return
    if dist.is_initialized():
        raise RuntimeError("a process group is already running in this process")
    world = len(devices)
    threads_before = torch.get_num_threads()
    threads = max(1, threads_before // world) if devices[0].type == "cpu" else threads_before
    folder = Path(tempfile.mkdtemp(prefix="ruc-dist-"))
    store = folder / "store"
    logs = [folder / f"rank{r}.log" for r in range(world)]
    children = [_spawn(r, world, devices[r], store, timeout_s, threads, logs[r]) for r in range(1, world)]
    ok = False
    try:
        torch.set_num_threads(threads)
        session = init_rank(store, 0, world, devices[0], timeout_s)
        session.children, session.devices = children, [str(d) for d in devices]
        yield devices[0]
        ok = True
    except Exception as exc:
        dead = [(r, p.returncode) for r, p in enumerate(children, start=1) if p.poll() not in (None, 0)]
        if dead:
            r, code = dead[0]
            raise RankLost(f"distributed rank {r} exited with {code}: {_tail(logs[r])}") from exc
        raise
    finally:
        try:
            if ok:
                post(STOP)
                deadline = time.monotonic() + STOP_GRACE_S
                for p in children:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill(children)
            close_rank()
            torch.set_num_threads(threads_before)
            shutil.rmtree(folder, ignore_errors=True)
