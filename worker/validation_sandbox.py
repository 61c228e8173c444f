"""Run one upload check in a child process under address-space and CPU-time limits.

Parsing hostile files is where memory bombs go off: a reader that is tricked into a huge allocation
must hit a limit in a process of its own, not take the worker down. The child is forked from a
zygote that has imported the readers once (``worker.validation_zygote``); it then sets ``RLIMIT_AS``
to its current address space plus the allowance and ``RLIMIT_CPU`` to its CPU time so far plus the
allowance, so the limits measure the check alone whatever torch maps at import. The result comes back
as JSON in a file; the parent only waits (renewing the upload's row meanwhile) and reads the child's
peak RSS.

Outcomes: the check's facts, a reason (a defect the reader named, a memory or CPU limit hit, a
crashed child). A child dies with its zygote and the zygote with its worker (``PR_SET_PDEATHSIG``),
so a SIGKILLed worker's process group leaves no check running.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import resource
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from worker.validation_zygote import ZygoteDied, shared_zygote

log = logging.getLogger(__name__)

Kind = Literal["dataset", "checkpoint"]
MiB = 1024**2
_PR_SET_PDEATHSIG = 1
# Allocation failures as torch reports them (numpy and PIL raise MemoryError).
_ALLOC_FAILURE_TEXTS = ("can't allocate memory", "not enough memory", "std::bad_alloc")


@dataclass(frozen=True)
class SandboxLimits:
    """memory_bytes: allocations beyond the child's imports; cpu_seconds: CPU time of the check;
    wall_seconds: the parent kills a child that runs longer (one blocked in I/O burns no CPU)."""

    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float


@dataclass(frozen=True)
class SandboxOutcome:
    """facts: the check's result when the file is valid; reason: why it is not; peak_rss_bytes: the
    child's peak resident memory (0 when it died before reporting)."""

    facts: dict[str, Any] | None
    reason: str | None
    peak_rss_bytes: int


def memory_limit_reason(limits: SandboxLimits) -> str:
    return f"validation exceeded its memory limit of {limits.memory_bytes // MiB} MiB"


def cpu_limit_reason(limits: SandboxLimits) -> str:
    return f"validation exceeded its CPU time limit of {limits.cpu_seconds} s"


def run_check(
    kind: Kind,
    path: Path,
    stated: dict[str, Any],
    *,
    limits: SandboxLimits,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_seconds: float = 60.0,
) -> SandboxOutcome:
    """Check ``path`` (a dataset or checkpoint) in a limited child; ``heartbeat`` runs every
    ``heartbeat_seconds`` while it works."""
    with tempfile.TemporaryDirectory(prefix="ruc-validate-") as tmp:
        result_path = Path(tmp) / "result.json"
        stderr_path = Path(tmp) / "stderr.txt"
        argv = [
            kind,
            str(path),
            json.dumps(stated),
            str(result_path),
            str(limits.memory_bytes),
            str(limits.cpu_seconds),
        ]
        try:
            status, cpu_used = shared_zygote().run(
                argv,
                stderr_path,
                wall_seconds=limits.wall_seconds,
                heartbeat=heartbeat,
                heartbeat_seconds=heartbeat_seconds,
            )
        except ZygoteDied:
            status, cpu_used = "zygote", 0.0
        result = _read_result(result_path)
        # The child's own VmHWM: ru_maxrss would show the largest child the zygote ever reaped.
        peak = int(result.get("peak_rss_bytes") or 0) if result else 0
        reason = _reason(status, result, limits, cpu_used)
        if reason is not None and result is None:
            tail = stderr_path.read_text(errors="replace")[-2000:] if stderr_path.exists() else ""
            log.warning("validation child of %s ended with status %s: %s", path.name, status, tail)
        facts = result.get("facts") if result and result.get("ok") else None
        return SandboxOutcome(facts=facts, reason=reason, peak_rss_bytes=peak)


def _high_water_mark() -> int:
    """Peak resident bytes of this process image."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _reason(
    status: int | str, result: dict[str, Any] | None, limits: SandboxLimits, cpu_used: float
) -> str | None:
    if status == "wall":
        return f"validation exceeded its time limit of {limits.wall_seconds:.0f} s"
    if result is not None and result.get("limit") == "memory":
        return memory_limit_reason(limits)
    if status == -signal.SIGXCPU or (status == -signal.SIGKILL and cpu_used >= limits.cpu_seconds):
        # SIGXCPU at the soft CPU limit; SIGKILL at the hard one (a child ignoring SIGXCPU).
        return cpu_limit_reason(limits)
    if result is None:
        if status == "zygote":
            return "validation crashed (its zygote process died)"
        name = signal.Signals(-status).name if isinstance(status, int) and status < 0 else f"exit {status}"
        return f"validation crashed ({name})"
    if result.get("ok"):
        return None
    return str(result.get("reason") or "validation failed")


# --- the child ------------------------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _address_space_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _set_limits(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    mem = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))


def _is_memory_failure(exc: BaseException | None) -> bool:
    """True when ``exc`` or anything it was raised from is an allocation failure (readers wrap them)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MemoryError):
            return True
        if isinstance(exc, RuntimeError) and any(t in str(exc) for t in _ALLOC_FAILURE_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _check(kind: Kind, path: Path, stated: dict[str, Any]) -> dict[str, Any]:
    """The check itself: facts of a valid file (a checkpoint's statement is written beside it)."""
    if kind == "dataset":
        from core.datasets import load_dataset

        return load_dataset(path).facts()
    from core.models import inspect_checkpoint, parse_statement, write_statement

    statement = parse_statement(stated)
    facts = inspect_checkpoint(path, statement=statement).to_dict()
    write_statement(path, statement)
    return facts


def preload_readers() -> None:
    """What every check imports, loaded before any limit (the zygote does it once for all checks)."""
    importlib.import_module("core.datasets")
    importlib.import_module("core.models")
    importlib.import_module("core.errors")


def child_main(argv: list[str]) -> None:
    kind, path, stated, result_path, memory, cpu, parent = argv
    die_with_parent(int(parent))
    preload_readers()
    from core.errors import CoreInputError

    out = open(result_path, "w")  # noqa: SIM115 - opened before the limits; written once below
    _set_limits(int(memory), int(cpu))
    result: dict[str, Any]
    try:
        result = {"ok": True, "facts": _check(kind, Path(path), json.loads(stated))}  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a reason for the parent
        if _is_memory_failure(exc):
            result = {"ok": False, "limit": "memory"}
        elif isinstance(exc, CoreInputError):
            result = {"ok": False, "reason": str(exc)}
        else:
            result = {"ok": False, "reason": f"could not read file: {type(exc).__name__}: {exc}"}
    result["peak_rss_bytes"] = _high_water_mark()
    out.write(json.dumps(result, default=str))
    out.close()
