"""``.npz`` datasets: ``images`` uint8 (N, H, W, C) or (N, H, W); optional ``labels`` int (N,),
``class_names`` str (L,), and one of ``assignments`` int (N,) / ``assignment_probs`` float (N, K).

Other keys are ignored. Arrays are read with ``allow_pickle=False``: object arrays (pickled Python
objects, which could run code) are refused. Container and header checks (member count, declared
sizes, each header's shape before its data is allocated) are ``core.datasets.npz_header``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.datasets.dataset import ArchiveLimits, ImageDataset
from core.datasets.npz_header import npz_members, read_array
from core.datasets.validation import check_assignment_probs, check_class_names, check_images, check_labels
from core.errors import CoreInputError

KNOWN_KEYS = ("images", "labels", "class_names", "assignments", "assignment_probs")


def load_npz(path: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> ImageDataset:
    """Load and validate an ``.npz`` dataset (see module docstring)."""
    members = npz_members(path, limits)
    if "images" not in members:
        found = ", ".join(sorted(members)) or "none"
        raise CoreInputError(
            "images", f"missing: an .npz dataset needs an 'images' array (found keys: {found})"
        )
    images = check_images(read_array(path, "images", members["images"]))
    n = images.shape[0]
    if n * images.shape[1] * images.shape[2] * images.shape[3] > limits.max_dataset_bytes:
        raise CoreInputError("images", f"larger than the limit of {limits.max_dataset_bytes} bytes")

    labels = check_labels(read_array(path, "labels", members["labels"]), n) if "labels" in members else None
    class_names: list[str] | None = None
    if "class_names" in members:
        raw = read_array(path, "class_names", members["class_names"])
        if raw.ndim != 1 or raw.dtype.kind not in "US":
            raise CoreInputError("class_names", f"must be a 1-d string array, got {raw.dtype} {raw.shape}")
        names = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in raw.tolist()]
        class_names = check_class_names(names, labels)

    if "assignments" in members and "assignment_probs" in members:
        raise CoreInputError("assignments", "give either 'assignments' or 'assignment_probs', not both")
    assignments: torch.Tensor | None = None
    if "assignments" in members:
        hard = check_labels(read_array(path, "assignments", members["assignments"]), n, field="assignments")
        assignments = torch.from_numpy(hard)
    elif "assignment_probs" in members:
        probs = check_assignment_probs(read_array(path, "assignment_probs", members["assignment_probs"]), n)
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
