"""Storage layout, keys and safe names. Rows keep keys relative to the store's root:

- ``datasets/<id>/data<suffix>``, ``checkpoints/<id>/model<suffix>`` (uploads, fixed names; a checkpoint's
  validated statement sits beside it as ``model<suffix>.statement.json``)
- ``jobs/<id>/artifacts/<attempt>/<name>`` (published artifacts), ``jobs/<id>/attempts/<n>/work/...``
  (work files: resume checkpoints)

A client-supplied name never becomes part of a key.
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
# The rows' path columns are String(500).
MAX_KEY_CHARS = 500
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class InvalidKey(ValueError):
    """A key that is not a plain relative path of safe parts (it could leave the store)."""


def check_key(key: str) -> str:
    """``key`` when it is ``part/part/...`` of letters, digits, ``._-`` (no part starting with a dot
    or empty, so no ``..``); raises InvalidKey otherwise."""
    if not key or len(key) > MAX_KEY_CHARS or not all(_KEY_PART.match(p) for p in key.split("/")):
        raise InvalidKey(f"not a storage key: {key[:80]!r}")
    return key


def folder_prefix(prefix: str) -> str:
    """A folder's key prefix ending in ``/`` (``jobs/a`` must not match ``jobs/ab/...``); never empty."""
    return check_key(prefix.rstrip("/")) + "/"


def upload_dir(folder: str, upload_id: str) -> str:
    """The folder of one upload: ``datasets/<id>`` or ``checkpoints/<id>``."""
    return check_key(f"{folder}/{upload_id}")


def job_dir(job_id: str) -> str:
    return check_key(f"jobs/{job_id}")


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
    """Delete a folder under a local directory, refusing anything outside it; a missing folder is fine."""
    path = resolve_inside(storage_dir, relative)
    if path is not None and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
