"""Peak resident memory of this process over a block of code (Linux ``/proc``), without torch.

Linux keeps the process's high-water mark (``VmHWM`` in ``/proc/self/status``) and resets it to the
current RSS when "5" is written to ``/proc/self/clear_refs`` (Linux >= 4.0): that peak is exact.
Where the reset is refused, a thread samples ``/proc/self/statm`` every SAMPLE_SECONDS instead,
which can miss a spike shorter than that. Off Linux, the peak reads 0 (unknown).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from pathlib import Path
from types import TracebackType

SAMPLE_SECONDS = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """Resident set of this process now, in bytes (0 when unknown)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc ``malloc_trim``; elsewhere a
    no-op), so the resident set before a measurement holds live memory only and a peak measured
    after earlier work is not inflated by pages that work freed but the allocator kept."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(name).malloc_trim(0)


def _high_water_mark() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class HostPeak:
    """``with HostPeak() as p: ...`` then ``p.peak``: the largest RSS of the process in the block, bytes."""

    def __init__(self) -> None:
        self.peak = 0
        self._exact = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HostPeak:
        release_free_memory()
        self._exact = _reset_high_water_mark()
        self.peak = current_rss()
        if not self._exact:
            self._thread = threading.Thread(target=self._sample, name="host-peak", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, current_rss())

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, current_rss(), _high_water_mark() if self._exact else 0)
