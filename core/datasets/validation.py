"""Checks on dataset arrays; every defect is a CoreInputError naming the field.

Shared by the ``.npz`` reader, the archive reader and ``ImageDataset`` itself, so every way into a
dataset enforces the same rules.
"""

from __future__ import annotations

import numpy as np

from core.errors import CoreInputError

# Row sums of assignment probabilities may drift by float32 rounding; more than this is a wrong file.
PROB_SUM_TOLERANCE = 1e-3


def check_image_header(
    dtype: np.dtype, shape: tuple[int, ...], field: str = "images"
) -> tuple[int, int, int, int]:
    """The image rules on an array's dtype and shape alone: uint8 (N, H, W, C) with C in {1, 3},
    (N, H, W) taken as C = 1, N > 0. Returns (N, H, W, C)."""
    if dtype != np.uint8:
        hint = " (scale to 0..255 and cast to uint8)" if np.issubdtype(dtype, np.floating) else ""
        raise CoreInputError(field, f"must have dtype uint8, got {dtype}{hint}")
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4:
        raise CoreInputError(
            field, f"must have rank 4 (N, H, W, C) or 3 (N, H, W), got rank {len(shape)} {tuple(shape)}"
        )
    n, h, w, c = (int(d) for d in shape)
    if n == 0:
        raise CoreInputError(field, "is empty (0 images)")
    if h == 0 or w == 0:
        raise CoreInputError(field, f"images have zero size: shape {tuple(shape)}")
    if c not in (1, 3):
        hint = ""
        if shape[1] in (1, 3):
            hint = "; it looks channels-first (N, C, H, W): transpose to (N, H, W, C)"
        elif c == 4:
            hint = "; drop the alpha channel"
        raise CoreInputError(field, f"channel count C must be 1 or 3, got {c} (shape {tuple(shape)}){hint}")
    return n, h, w, c


def check_images(images: np.ndarray, field: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C) with C in {1, 3}; (N, H, W) is taken as C = 1. Returns (N, H, W, C)."""
    check_image_header(images.dtype, images.shape, field)
    return images[..., None] if images.ndim == 3 else images


def _integer_values(values: np.ndarray, field: str) -> np.ndarray:
    """int64 copy of an integer array, or of a float array whose values are all whole numbers."""
    if values.dtype == np.bool_ or not (
        np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    ):
        raise CoreInputError(field, f"must be integers, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating):
        bad_nan = np.flatnonzero(~np.isfinite(values))
        if bad_nan.size:
            raise CoreInputError(field, f"contains NaN or infinite values (first at index {int(bad_nan[0])})")
        frac = np.flatnonzero(values != np.round(values))
        if frac.size:
            i = int(frac[0])
            raise CoreInputError(field, f"must be integers; found {values[i]!r} at index {i}")
    if (
        np.issubdtype(values.dtype, np.unsignedinteger)
        and values.size
        and values.max() > np.iinfo(np.int64).max
    ):
        raise CoreInputError(field, "values do not fit in int64")
    return values.astype(np.int64)


def check_labels(labels: np.ndarray, n: int, field: str = "labels", *, of: str = "images") -> np.ndarray:
    """Integer (N,) >= 0; ``of`` names what N counts (images, rows of a feature array). Returns int64 (N,)."""
    if labels.ndim != 1:
        raise CoreInputError(field, f"must have shape (N,) = ({n},), got {labels.shape}")
    if labels.shape[0] != n:
        raise CoreInputError(field, f"has {labels.shape[0]} entries but there are {n} {of}")
    out = _integer_values(labels, field)
    neg = np.flatnonzero(out < 0)
    if neg.size:
        i = int(neg[0])
        raise CoreInputError(field, f"must be >= 0; found {int(out[i])} at index {i}")
    return out


def check_assignment_probs(
    probs: np.ndarray, n: int, field: str = "assignment_probs", *, of: str = "images"
) -> np.ndarray:
    """Float (N, K), finite, >= 0, rows summing to 1. Returns float32 (N, K)."""
    if not np.issubdtype(probs.dtype, np.floating):
        raise CoreInputError(field, f"must be a float array, got dtype {probs.dtype}")
    if probs.ndim != 2:
        raise CoreInputError(field, f"must have shape (N, K), got {probs.shape}")
    if probs.shape[0] != n:
        raise CoreInputError(field, f"has {probs.shape[0]} rows but there are {n} {of}")
    if probs.shape[1] < 2:
        raise CoreInputError(field, f"needs at least 2 clusters (columns), got {probs.shape[1]}")
    bad = np.argwhere(~np.isfinite(probs))
    if bad.size:
        raise CoreInputError(field, f"contains NaN or infinite values (first at row {int(bad[0][0])})")
    neg = np.argwhere(probs < 0)
    if neg.size:
        raise CoreInputError(field, f"contains negative probabilities (first at row {int(neg[0][0])})")
    sums = probs.astype(np.float64).sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_TOLERANCE)
    if off.size:
        i = int(off[0])
        raise CoreInputError(field, f"rows must sum to 1; row {i} sums to {sums[i]:.6g}")
    return probs.astype(np.float32)


def check_class_names(names: list[str], labels: np.ndarray | None, field: str = "class_names") -> list[str]:
    """One distinct, non-empty name per label value 0..max(labels)."""
    if labels is None:
        raise CoreInputError(field, "given without labels")
    if any(not isinstance(s, str) or not s for s in names):
        raise CoreInputError(field, "must be non-empty strings")
    if len(set(names)) != len(names):
        raise CoreInputError(field, "names must be distinct")
    top = int(labels.max())
    if top >= len(names):
        raise CoreInputError(field, f"has {len(names)} names but labels go up to {top}")
    return list(names)
