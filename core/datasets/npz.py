"""``.npz`` datasets: ``images`` uint8 (N, H, W, C) or (N, H, W); optional ``labels`` int (N,),
``class_names`` str (L,), and one of ``assignments`` int (N,) / ``assignment_probs`` float (N, K).

Other keys are ignored. Arrays are read with ``allow_pickle=False``: object arrays (pickled Python
objects, which could run code) are refused. An ``.npz`` is a zip, so member count and declared sizes
are checked against ``ArchiveLimits`` before any array is read, and every ``.npy`` header's shape
before its data is allocated.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.datasets.dataset import ArchiveLimits, ImageDataset
from core.datasets.validation import check_assignment_probs, check_class_names, check_images, check_labels
from core.datasets.zip_guard import check_zip_directory
from core.errors import CoreInputError

KNOWN_KEYS = ("images", "labels", "class_names", "assignments", "assignment_probs")


def _check_container(path: Path, limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """Zip-level checks; returns the ``.npy`` members by array name."""
    check_zip_directory(
        path,
        max_members=limits.max_members,
        field="npz",
        what="valid .npz file (it must be a zip of .npy arrays)",
    )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CoreInputError(
            "npz", f"not a valid .npz file (it must be a zip of .npy arrays): {err}"
        ) from None
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


def _read_array(path: Path, key: str, info: zipfile.ZipInfo) -> np.ndarray:
    """Read one array after checking its header: no object dtype, size within the member's size."""
    try:
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
        with zipfile.ZipFile(path) as zf, zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except CoreInputError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise CoreInputError(key, "is an object array (pickled Python objects); refused") from None
        raise CoreInputError(key, f"unreadable array: {err}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CoreInputError(key, f"unreadable array (corrupt file?): {err}") from None


def load_npz(path: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> ImageDataset:
    """Load and validate an ``.npz`` dataset (see module docstring)."""
    members = _check_container(path, limits)
    if "images" not in members:
        found = ", ".join(sorted(members)) or "none"
        raise CoreInputError(
            "images", f"missing: an .npz dataset needs an 'images' array (found keys: {found})"
        )
    images = check_images(_read_array(path, "images", members["images"]))
    n = images.shape[0]
    if n * images.shape[1] * images.shape[2] * images.shape[3] > limits.max_dataset_bytes:
        raise CoreInputError("images", f"larger than the limit of {limits.max_dataset_bytes} bytes")

    labels = check_labels(_read_array(path, "labels", members["labels"]), n) if "labels" in members else None
    class_names: list[str] | None = None
    if "class_names" in members:
        raw = _read_array(path, "class_names", members["class_names"])
        if raw.ndim != 1 or raw.dtype.kind not in "US":
            raise CoreInputError("class_names", f"must be a 1-d string array, got {raw.dtype} {raw.shape}")
        names = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in raw.tolist()]
        class_names = check_class_names(names, labels)

    if "assignments" in members and "assignment_probs" in members:
        raise CoreInputError("assignments", "give either 'assignments' or 'assignment_probs', not both")
    assignments: torch.Tensor | None = None
    if "assignments" in members:
        hard = check_labels(_read_array(path, "assignments", members["assignments"]), n, field="assignments")
        assignments = torch.from_numpy(hard)
    elif "assignment_probs" in members:
        probs = check_assignment_probs(_read_array(path, "assignment_probs", members["assignment_probs"]), n)
        assignments = torch.from_numpy(probs)

    ignored = sorted(set(members) - set(KNOWN_KEYS))
    notes = [f"ignored unknown array(s): {', '.join(ignored)}"] if ignored else []
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels) if labels is not None else None,
        class_names=class_names,
        assignments=assignments,
        notes=notes,
    )
