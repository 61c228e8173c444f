"""What a prediction's inputs must be, checked from an array header or a loaded dataset alike.

An image job takes images of its kind: uint8 (N, H, W, C) with the job's height, width and
channels (the networks normalise inside, so nothing else is converted). A feature job takes rows of
the feature space its MLP heads read: the ``.npz`` array ``features`` (space ``default``) or
``features_<name>``, float (N, D) with the job's D, every value finite (the heads standardise
inside). Either way 1 <= N <= ``max_images``, and reading limits follow from that: nothing larger
than ``max_images`` rows of the job's size is ever decoded. No torch here: the API applies these
rules to an ``.npz`` header (or a dataset's facts) before the request is queued, and the worker
reads a feature array with ``read_features``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets.features import check_features, check_features_header, key_of_space, space_of_key
from core.datasets.limits import MIB, ArchiveLimits
from core.datasets.npz_header import array_header, images_header, npz_members, read_array
from core.errors import CoreInputError

IMAGES_FIELD = "images"
# Archive entries beside the images (folders, skipped files) a prediction upload may hold.
SPARE_MEMBERS = 1024
# A header, labels or class names may sit beside the images in an .npz.
SPARE_BYTES = 16 * MIB
# The widest float a feature array may be stored in (float64), for the declared-size limit.
FEATURE_STORED_BYTES = 8


@dataclass(frozen=True)
class JobInputs:
    """What a prediction request must match, read from the job's result: the cluster count K, how
    many rows one request may hold, and either the images' (H, W, C) (an image job) or the npz key
    and dimension D of the feature array its networks read (a feature job)."""

    num_clusters: int
    max_images: int
    image_shape: tuple[int, int, int] | None = None
    feature_key: str | None = None
    feature_dim: int | None = None

    @property
    def field(self) -> str:
        """The array a request's inputs are read from, which its problems name."""
        return self.feature_key or IMAGES_FIELD


def job_inputs(result: dict[str, Any], *, max_images: int, max_values: int) -> JobInputs:
    """From a succeeded job's result: K and its image shape, or its feature space (``base_info``).
    ``max_values`` bounds rows x K (the probabilities a request returns), so the request limit is
    min(max_images, max_values // K)."""
    k = len(result["refined"]["cluster_sizes"])
    rows = max(1, min(max_images, max_values // max(k, 1)))
    base = result.get("base_info") or {}
    if base.get("input") == "features":
        space = base.get("feature_space") or {}
        if space.get("name") is None or space.get("dim") is None:
            raise CoreInputError("job_id", "the job's result records no feature space to read new rows in")
        return JobInputs(k, rows, feature_key=key_of_space(str(space["name"])), feature_dim=int(space["dim"]))
    facts = result["dataset"]
    if facts.get("height") is None:
        raise CoreInputError("job_id", "the job's result records no image size to check new images against")
    shape = (int(facts["height"]), int(facts["width"]), int(facts["channels"]))
    return JobInputs(k, rows, image_shape=shape)


def check_prediction_shape(
    shape: tuple[int, int, int, int], *, expected: tuple[int, int, int] | None, max_images: int
) -> int:
    """The image count of (N, H, W, C) images for a job whose images are ``expected`` (H, W, C).

    Raises CoreInputError naming ``images`` for a count over ``max_images`` or another size or
    channel count than the job's (None: the job's size is unknown, only the count is checked).
    """
    n, h, w, c = shape
    if n > max_images:
        raise CoreInputError(
            IMAGES_FIELD, f"{n} images, more than the limit of {max_images} per prediction request"
        )
    if expected is not None:
        eh, ew, ec = expected
        if (h, w) != (eh, ew):
            raise CoreInputError(IMAGES_FIELD, f"images are {h}x{w} (HxW) but the job's images are {eh}x{ew}")
        if c != ec:
            raise CoreInputError(IMAGES_FIELD, f"images have {c} channel(s) but the job's images have {ec}")
    return n


def check_feature_shape(shape: tuple[int, int], wanted: JobInputs) -> int:
    """The row count of float (N, D) features for a feature job; CoreInputError naming its array for
    another D than the job's or more rows than a request may hold."""
    key, dim = wanted.field, wanted.feature_dim
    n, d = shape
    if d != dim:
        raise CoreInputError(key, f"has {d} dimensions but the job's feature space has {dim}")
    if n > wanted.max_images:
        raise CoreInputError(
            key, f"{n} rows, more than the limit of {wanted.max_images} per prediction request"
        )
    return n


def dataset_feature_rows(facts: Mapping[str, Any], wanted: JobInputs) -> int:
    """The row count of a validated dataset (its facts) for a feature job; CoreInputError naming the
    job's array when the dataset lacks that space or it does not fit."""
    key = wanted.field
    space = space_of_key(key)
    spaces = facts.get("feature_spaces") or {}
    if space not in spaces:
        listed = ", ".join(spaces) or "none"
        raise CoreInputError(key, f"missing: the dataset has no feature space {space!r} (it has: {listed})")
    return check_feature_shape((int(facts["count"]), int(spaces[space])), wanted)


def require_npz(name: str, wanted: JobInputs) -> None:
    """A feature job's rows come in an ``.npz``: an image-folder archive holds no feature arrays."""
    if wanted.feature_key is not None and not name.lower().endswith(".npz"):
        raise CoreInputError(
            wanted.feature_key, "a feature job's inputs are an .npz array; an image archive has none"
        )


def prediction_limits(image_shape: tuple[int, int, int], max_images: int) -> ArchiveLimits:
    """Reading limits of a prediction upload: at most ``max_images`` images of ``image_shape``."""
    h, w, c = image_shape
    decoded = max_images * h * w * c
    return ArchiveLimits(
        max_members=max_images + SPARE_MEMBERS,
        max_total_bytes=2 * decoded + SPARE_BYTES,
        max_member_bytes=max(MIB, 4 * h * w * c + 64 * 1024),
        max_image_pixels=h * w,
        max_dataset_bytes=decoded,
    )


def input_limits(wanted: JobInputs) -> ArchiveLimits:
    """Reading limits of a prediction upload for the job: its images, or ``max_images`` rows of its
    feature array stored in float64 (with room for other arrays beside it, as for images)."""
    if wanted.feature_dim is None:
        assert wanted.image_shape is not None
        return prediction_limits(wanted.image_shape, wanted.max_images)
    stored = wanted.max_images * wanted.feature_dim * FEATURE_STORED_BYTES
    return ArchiveLimits(max_members=SPARE_MEMBERS, max_total_bytes=2 * stored + SPARE_BYTES)


def _feature_rows(path: Path, members: dict[str, zipfile.ZipInfo], wanted: JobInputs) -> int:
    key = wanted.field
    if key not in members:
        found = ", ".join(sorted(members)) or "none"
        raise CoreInputError(
            key,
            f"missing: this job's networks read the feature array {key!r}, float (N, {wanted.feature_dim}) "
            f"(found keys: {found})",
        )
    shape, dtype = array_header(path, key, members[key])
    n, d = check_features_header(dtype, shape, key, max_dim=ArchiveLimits().max_feature_dim)
    return check_feature_shape((n, d), wanted)


def inspect_npz(path: Path, wanted: JobInputs) -> int:
    """The row count of an ``.npz`` prediction upload, from its ``images`` or feature array's header
    alone. Raises CoreInputError naming the field (``npz``, the array) for every rule it breaks."""
    # Only headers are read, so declared sizes up to the dataset default are harmless here; the
    # worker reads the data under ``input_limits``.
    limits = ArchiveLimits(max_members=SPARE_MEMBERS)
    if wanted.feature_key is not None:
        return _feature_rows(path, npz_members(path, limits), wanted)
    shape = images_header(path, limits)
    return check_prediction_shape(shape, expected=wanted.image_shape, max_images=wanted.max_images)


def read_features(path: Path, wanted: JobInputs, limits: ArchiveLimits) -> np.ndarray:
    """The job's feature array of an ``.npz`` as finite float32 (N, D), under ``limits``; only that
    array is read. CoreInputError naming it (or ``npz``) for every rule it breaks."""
    require_npz(path.name, wanted)
    members = npz_members(path, limits)
    _feature_rows(path, members, wanted)  # every header rule before the data is read
    key = wanted.field
    return check_features(read_array(path, key, members[key]), key, max_dim=int(wanted.feature_dim or 0))
