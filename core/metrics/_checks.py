"""Input checks for the metrics: one error type, naming the field."""

from __future__ import annotations

import numpy as np

from core.errors import CoreInputError


def labels_array(a: np.ndarray, field: str, *, n: int | None = None) -> np.ndarray:
    """Return ``a`` as a 1-D int64 array of non-negative labels, or raise ``CoreInputError``."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise CoreInputError(field, f"expected a 1-D array of labels, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise CoreInputError(field, f"expected {n} labels, got {arr.shape[0]}")
    is_int = np.issubdtype(arr.dtype, np.integer)
    if arr.size and not is_int and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise CoreInputError(field, "labels must be integers")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise CoreInputError(field, f"labels must be >= 0, got {int(arr.min())}")
    return arr


def cluster_array(a: np.ndarray, field: str, num_clusters: int, *, n: int | None = None) -> np.ndarray:
    """Like ``labels_array`` and also every value < ``num_clusters``."""
    if num_clusters < 1:
        raise CoreInputError("num_clusters", f"must be >= 1, got {num_clusters}")
    arr = labels_array(a, field, n=n)
    if arr.size and arr.max() >= num_clusters:
        raise CoreInputError(field, f"cluster index {int(arr.max())} >= num_clusters={num_clusters}")
    return arr
