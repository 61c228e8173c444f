"""Precomputed embeddings in a dataset: ``features`` and ``features_<name>`` arrays, float (N, D).

Each array is one *feature space*; ``features`` is the space named ``default``, ``features_clip``
the space ``clip``. Names are short identifiers, so they can be written in a job spec
(``base.features``) and shown in facts without escaping. Values are checked here, once, on
upload: a finite float32 copy of every array is what jobs read.
"""

from __future__ import annotations

import re

import numpy as np

from core.errors import CoreInputError
from core.spec.features import DEFAULT_SPACE, SPACE_NAME_PATTERN, ordered_spaces

FEATURES_KEY = "features"
FEATURES_PREFIX = "features_"
# What a space may be called: the pattern of the job spec's base.features.
_NAME = re.compile(SPACE_NAME_PATTERN)
MAX_FEATURE_SPACES = 16


def space_of_key(key: str) -> str | None:
    """The feature space an npz key holds (``features`` -> default, ``features_clip`` -> clip), else None."""
    if key == FEATURES_KEY:
        return DEFAULT_SPACE
    if key.startswith(FEATURES_PREFIX):
        return key[len(FEATURES_PREFIX) :]
    return None


def key_of_space(space: str) -> str:
    """The npz key of a space: the inverse of ``space_of_key``."""
    return FEATURES_KEY if space == DEFAULT_SPACE else FEATURES_PREFIX + space


def feature_keys(keys: list[str]) -> dict[str, str]:
    """space -> npz key for the feature arrays among ``keys``, in a fixed order (default first, then
    by name). Raises CoreInputError for an unusable name, a clash with ``features`` or too many spaces."""
    spaces: dict[str, str] = {}
    for key in keys:
        space = space_of_key(key)
        if space is None:
            continue
        if not _NAME.match(space):
            raise CoreInputError(
                key,
                "feature space names must be 1-32 lower-case letters, digits or '_' starting with a "
                f"letter or digit (features_<name>), got {space!r}",
            )
        if space == DEFAULT_SPACE and key != FEATURES_KEY:
            raise CoreInputError(key, "clashes with 'features', which is the space named 'default'")
        spaces[space] = key
    if len(spaces) > MAX_FEATURE_SPACES:
        raise CoreInputError(
            FEATURES_KEY, f"{len(spaces)} feature spaces, more than the limit of {MAX_FEATURE_SPACES}"
        )
    return {s: spaces[s] for s in ordered_spaces(spaces)}


def check_features_header(
    dtype: np.dtype, shape: tuple[int, ...], field: str, *, max_dim: int
) -> tuple[int, int]:
    """The rules of ``check_features`` that dtype and shape alone decide (an ``.npy`` header
    suffices): float, 2-D, N >= 1, 1 <= D <= max_dim. Returns (N, D).

    Integer arrays are refused: an embedding is float, and integer data is more likely images or
    labels under the wrong key.
    """
    if not np.issubdtype(dtype, np.floating):
        raise CoreInputError(field, f"must be a float array (N, D), got dtype {dtype}")
    if len(shape) != 2:
        raise CoreInputError(field, f"must be 2-D (N, D), got shape {tuple(shape)}")
    n, d = (int(x) for x in shape)
    if n == 0:
        raise CoreInputError(field, "is empty (0 rows)")
    if d == 0 or d > max_dim:
        raise CoreInputError(field, f"has {d} dimensions; 1 to {max_dim} are allowed")
    return n, d


def check_features(values: np.ndarray, field: str, *, max_dim: int) -> np.ndarray:
    """Float (N, D), N >= 1, 1 <= D <= max_dim, every value finite in float32. Returns float32 (N, D).

    Values beyond float32's range count as non-finite.
    """
    check_features_header(values.dtype, values.shape, field, max_dim=max_dim)
    with np.errstate(over="ignore"):
        out = values.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad:
        first = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        plural = "s" if bad != 1 else ""
        raise CoreInputError(
            field, f"{bad} non-finite value{plural} (NaN, inf or beyond float32; first in row {first})"
        )
    return np.ascontiguousarray(out)


def check_rows(name: str, rows: int, reference: tuple[str, int]) -> None:
    """Every array describes the same N samples: ``name`` must have as many rows as ``reference``."""
    ref_name, ref_rows = reference
    if rows != ref_rows:
        raise CoreInputError(name, f"has {rows} rows, {ref_name} has {ref_rows}")
