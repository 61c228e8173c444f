"""What a prediction's images must be, checked from an array header or a loaded dataset alike.

The images are the job's kind: uint8 (N, H, W, C) with the job's height, width and channels (the
networks normalise inside, so nothing else is converted), 1 <= N <= ``max_images``. Reading limits
follow from that: nothing larger than ``max_images`` images of the job's size is ever decoded.
No torch here: the API applies these rules to an ``.npz`` header before the upload is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.datasets.limits import MIB, ArchiveLimits
from core.datasets.npz_header import images_header
from core.errors import CoreInputError

IMAGES_FIELD = "images"
# Archive entries beside the images (folders, skipped files) a prediction upload may hold.
SPARE_MEMBERS = 1024
# A header, labels or class names may sit beside the images in an .npz.
SPARE_BYTES = 16 * MIB


@dataclass(frozen=True)
class JobImages:
    """What a prediction request must match, read from the job's result: the images' (H, W, C), the
    cluster count K, and how many images one request may hold."""

    image_shape: tuple[int, int, int]
    num_clusters: int
    max_images: int


def job_images(result: dict[str, Any], *, max_images: int, max_values: int) -> JobImages:
    """From a succeeded job's result: its dataset's image shape and K. ``max_values`` bounds images x K
    (the probabilities a request returns), so the request limit is min(max_images, max_values // K)."""
    facts = result["dataset"]
    if (result.get("base_info") or {}).get("input") == "features" or facts.get("height") is None:
        raise CoreInputError(
            "job_id",
            "predictions assign new images; this job's networks read precomputed features "
            "(refine.input: features), so there is no image model to assign them with",
        )
    k = len(result["refined"]["cluster_sizes"])
    shape = (int(facts["height"]), int(facts["width"]), int(facts["channels"]))
    return JobImages(shape, k, max(1, min(max_images, max_values // max(k, 1))))


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


def inspect_npz(path: Path, *, image_shape: tuple[int, int, int], max_images: int) -> int:
    """The image count of an ``.npz`` prediction upload, from its ``images`` header alone.

    Raises CoreInputError naming the field (``npz``, ``images``) for every rule it breaks.
    """
    # Only the header is read, so declared sizes up to the dataset default are harmless here; the
    # worker reads the data under ``prediction_limits``.
    shape = images_header(path, ArchiveLimits(max_members=SPARE_MEMBERS))
    return check_prediction_shape(shape, expected=image_shape, max_images=max_images)
