"""``.npz`` datasets: ``images`` uint8 (N, H, W, C) or (N, H, W), and/or precomputed embeddings
``features`` / ``features_<name>`` float (N, D) (``core.datasets.features``); optional ``labels``
int (N,), ``class_names`` str (L,), and one of ``assignments`` int (N,) / ``assignment_probs``
float (N, K). Every array describes the same N samples; an error names the array that disagrees.

Other keys are ignored. Arrays are read with ``allow_pickle=False``: object arrays (pickled Python
objects, which could run code) are refused. Container and header checks (member count, declared
sizes, each header's shape before its data is allocated) are ``core.datasets.npz_header``'s.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.datasets.dataset import ArchiveLimits, ImageDataset
from core.datasets.features import check_features, check_rows, feature_keys
from core.datasets.npz_header import npz_members, read_array
from core.datasets.validation import check_assignment_probs, check_class_names, check_images, check_labels
from core.errors import CoreInputError

KNOWN_KEYS = ("images", "labels", "class_names", "assignments", "assignment_probs")


def _load_features(
    path: Path, members: dict[str, zipfile.ZipInfo], limits: ArchiveLimits, reference: tuple[str, int] | None
) -> tuple[dict[str, torch.Tensor], tuple[str, int] | None]:
    """Every feature space, checked; and the (array, N) the other arrays are compared with."""
    features: dict[str, torch.Tensor] = {}
    total = 0
    for space, key in feature_keys(list(members)).items():
        values = check_features(read_array(path, key, members[key]), key, max_dim=limits.max_feature_dim)
        if reference is None:
            reference = (key, values.shape[0])
        check_rows(key, values.shape[0], reference)
        total += values.nbytes
        if total > limits.max_dataset_bytes:
            raise CoreInputError(
                key, f"feature arrays total more than the limit of {limits.max_dataset_bytes} bytes (float32)"
            )
        features[space] = torch.from_numpy(values)
    return features, reference


def load_npz(path: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> ImageDataset:
    """Load and validate an ``.npz`` dataset (see module docstring)."""
    members = npz_members(path, limits)
    if "images" not in members and not feature_keys(list(members)):
        found = ", ".join(sorted(members)) or "none"
        raise CoreInputError(
            "images",
            "missing: an .npz dataset needs an 'images' array and/or 'features' arrays "
            f"(found keys: {found})",
        )
    images: np.ndarray | None = None
    reference: tuple[str, int] | None = None
    if "images" in members:
        images = check_images(read_array(path, "images", members["images"]))
        if math.prod(images.shape) > limits.max_dataset_bytes:
            raise CoreInputError("images", f"larger than the limit of {limits.max_dataset_bytes} bytes")
        reference = ("images", images.shape[0])
    features, reference = _load_features(path, members, limits, reference)
    assert reference is not None
    n = reference[1]
    if n > limits.max_samples:
        raise CoreInputError(reference[0], f"has {n} rows, more than the limit of {limits.max_samples}")
    of = "images" if images is not None else f"rows in {reference[0]}"

    labels = (
        check_labels(read_array(path, "labels", members["labels"]), n, of=of) if "labels" in members else None
    )
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
        raw_hard = read_array(path, "assignments", members["assignments"])
        assignments = torch.from_numpy(check_labels(raw_hard, n, field="assignments", of=of))
    elif "assignment_probs" in members:
        raw_probs = read_array(path, "assignment_probs", members["assignment_probs"])
        assignments = torch.from_numpy(check_assignment_probs(raw_probs, n, of=of))

    known = {*KNOWN_KEYS, *feature_keys(list(members)).values()}
    ignored = sorted(set(members) - known)
    notes = [f"ignored unknown array(s): {', '.join(ignored)}"] if ignored else []
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)) if images is not None else None,
        labels=torch.from_numpy(labels) if labels is not None else None,
        class_names=class_names,
        assignments=assignments,
        notes=notes,
        features=features,
    )
