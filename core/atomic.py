"""Atomic file writes for the whole core: readers see the old file or the new one, never a torn one.

Each write goes to a temporary file in the target's folder (same file system, so ``os.replace``
is atomic), is flushed and fsynced, then renamed over the target. A crash leaves at most a
``.<name>.tmp-<pid>`` file behind, which the next write of the same process id replaces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes"]


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Create or replace ``path`` with what ``write(fh)`` writes to a binary file handle.

    The parent folder is created when missing. ``write`` streams into the temporary file, so
    large objects are never buffered in memory twice.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with ``data``."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` into ``path`` atomically."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))
