"""The ``.npz`` container and its ``.npy`` headers, read without torch and before any array data.

An ``.npz`` is a zip, so member count and declared sizes are checked against ``ArchiveLimits``
before any array is read, and every ``.npy`` header's shape before its data is allocated. The
dataset reader (``core.datasets.npz``) reads arrays through here; the API reads the ``images``
header of a prediction upload with ``images_header`` (count, size, channels) without the data.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from core.datasets.limits import ArchiveLimits
from core.datasets.validation import check_image_header
from core.datasets.zip_guard import check_zip_directory
from core.errors import CoreInputError

_NOT_NPZ = "valid .npz file (it must be a zip of .npy arrays)"
T = TypeVar("T")


def npz_members(path: Path, limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """Zip-level checks; returns the ``.npy`` members by array name."""
    check_zip_directory(path, max_members=limits.max_members, field="npz", what=_NOT_NPZ)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CoreInputError("npz", f"not a {_NOT_NPZ}: {err}") from None
    if len(infos) > limits.max_members:
        raise CoreInputError("npz", f"has {len(infos)} members, more than the limit {limits.max_members}")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        raise CoreInputError(
            "npz", f"arrays total {declared} bytes uncompressed, more than the limit {limits.max_total_bytes}"
        )
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.flag_bits & 0x1:
            raise CoreInputError(f"npz:{info.filename}", "is encrypted")
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        members[name] = info
    return members


def _header(path: Path, key: str, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from one member's ``.npy`` header: no object dtype, data within the member."""
    with zipfile.ZipFile(path) as zf, zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise CoreInputError(
            key, "is an object array (pickled Python objects); refused, store a plain numeric array"
        )
    # A zero-size dtype ('|S0', 'V0') makes any element count hold no bytes, so the size check
    # below would pass while numpy still builds per-element objects (e.g. in tolist()).
    if dtype.itemsize == 0:
        raise CoreInputError(key, f"has a zero-size dtype {dtype.str!r}; refused")
    # The header's shape drives numpy's allocation: a lying header must not allocate more than
    # the member actually declares; with itemsize >= 1 this caps the element count too.
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > info.file_size:
        raise CoreInputError(
            key, f"header claims {nbytes} bytes of data but the member holds {info.file_size}"
        )
    return tuple(int(d) for d in shape), dtype


def _guarded(key: str, read: Callable[[], T]) -> T:
    """Run ``read()``; numpy's and zipfile's errors become a CoreInputError naming ``key``."""
    try:
        return read()
    except CoreInputError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise CoreInputError(key, "is an object array (pickled Python objects); refused") from None
        raise CoreInputError(key, f"unreadable array: {err}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CoreInputError(key, f"unreadable array (corrupt file?): {err}") from None


def array_header(path: Path, key: str, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of array ``key`` after the header checks, without reading its data."""
    return _guarded(key, lambda: _header(path, key, info))


def read_array(path: Path, key: str, info: zipfile.ZipInfo) -> np.ndarray:
    """Read one array after checking its header (``array_header``)."""

    def read() -> np.ndarray:
        _header(path, key, info)
        with zipfile.ZipFile(path) as zf, zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    return _guarded(key, read)


def images_header(path: Path, limits: ArchiveLimits) -> tuple[int, int, int, int]:
    """(N, H, W, C) of the ``images`` array of an ``.npz`` by the dataset rules, data unread."""
    members = npz_members(path, limits)
    if "images" not in members:
        found = ", ".join(sorted(members)) or "none"
        raise CoreInputError("images", f"missing: an .npz needs an 'images' array (found keys: {found})")
    shape, dtype = array_header(path, "images", members["images"])
    return check_image_header(dtype, shape)
