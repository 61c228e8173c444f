"""Storage layout and safe paths. Rows keep paths relative to ``Settings.storage_dir``:

- ``datasets/<id>/data<suffix>``, ``checkpoints/<id>/model<suffix>`` (uploads, fixed names)
- ``jobs/<id>/...`` (work files and artifacts, written by the worker)

A client-supplied name never becomes part of a path.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from pathlib import Path

DATASET_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".npz", ".zip", ".tar")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth.tar", ".safetensors", ".pt", ".pth")

_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def sanitize_filename(name: str) -> str:
    """A display-only name: last path component, printable ASCII subset, at most 255 chars."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", name).strip(" .")
    return name[-255:] or "upload"


def matched_suffix(filename: str, allowed: tuple[str, ...]) -> str | None:
    """The allowed suffix the name ends with (longest match wins: .tar.gz before .gz), else None."""
    lower = filename.lower()
    for suffix in sorted(allowed, key=len, reverse=True):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    return None


def resolve_inside(storage_dir: Path, relative: str) -> Path | None:
    """``storage_dir / relative`` resolved, or None when it would escape storage (``..``, symlinks)."""
    root = storage_dir.resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path.is_relative_to(root) and path != root else None


def remove_dir(storage_dir: Path, relative: str) -> None:
    """Delete a folder under storage, refusing anything outside it; a missing folder is fine."""
    path = resolve_inside(storage_dir, relative)
    if path is not None and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
