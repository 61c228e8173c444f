"""The in-memory dataset: uint8 (N, H, W, C) images and/or float32 (N, D) feature spaces, plus
optional labels and assignments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from core.datasets.limits import ArchiveLimits as ArchiveLimits  # re-exported
from core.errors import CoreInputError


@dataclass
class ImageDataset:
    """A dataset held in memory: images, feature spaces, or both, describing the same N samples.

    images: uint8 (N, H, W, C), C in {1, 3}, or None for a dataset of precomputed features only.
    features: feature space name -> float32 (N, D) (``core.datasets.features``; ``default`` is the
        npz array ``features``), in the order the reader fixed (default first, then by name).
    labels: int64 (N,) evaluation labels (never used for training), or None.
    class_names: name of each label value (archive class folders), or None.
    assignments: uploaded base clustering, int64 (N,) cluster ids or float32 (N, K) probabilities.
    notes: what the loader did that the user should know (skipped files, converted modes).
    """

    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    assignments: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Cheap structural checks only; value checks live in validation.py and run on load.
        im = self.images
        if im is None and not self.features:
            raise CoreInputError("images", "a dataset needs images or at least one feature array")
        if im is not None and (
            im.dtype != torch.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3) or im.shape[0] == 0
        ):
            raise CoreInputError(
                "images",
                "must be a non-empty uint8 (N, H, W, C) tensor, C in {1, 3}; "
                f"got {im.dtype} {tuple(im.shape)}",
            )
        n = self.n
        for name, f in self.features.items():
            if f.dtype != torch.float32 or f.ndim != 2 or f.shape[0] != n or f.shape[1] == 0:
                raise CoreInputError(
                    f"features.{name}", f"must be float32 ({n}, D), got {f.dtype} {tuple(f.shape)}"
                )
        if self.labels is not None and (self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (n,)):
            raise CoreInputError(
                "labels", f"must be int64 ({n},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        a = self.assignments
        if a is not None:
            ok = (a.dtype == torch.int64 and tuple(a.shape) == (n,)) or (
                a.dtype == torch.float32 and a.ndim == 2 and a.shape[0] == n
            )
            if not ok:
                raise CoreInputError(
                    "assignments", f"must be int64 ({n},) or float32 ({n}, K), got {a.dtype} {tuple(a.shape)}"
                )

    @property
    def has_images(self) -> bool:
        return self.images is not None

    @property
    def n(self) -> int:
        if self.images is not None:
            return int(self.images.shape[0])
        return int(next(iter(self.features.values())).shape[0])

    def _image_dim(self, axis: int) -> int:
        if self.images is None:
            raise CoreInputError("images", "the dataset has no images (only precomputed features)")
        return int(self.images.shape[axis])

    @property
    def height(self) -> int:
        return self._image_dim(1)

    @property
    def width(self) -> int:
        return self._image_dim(2)

    @property
    def channels(self) -> int:
        return self._image_dim(3)

    def feature_dims(self) -> dict[str, int]:
        """Feature space name -> D, in the dataset's order."""
        return {name: int(f.shape[1]) for name, f in self.features.items()}

    def facts(self) -> dict[str, Any]:
        """JSON-serialisable summary shown to the client after validation (image fields null
        for a dataset of features only)."""
        images = self.images is not None
        return {
            "count": self.n,
            "height": self.height if images else None,
            "width": self.width if images else None,
            "channels": self.channels if images else None,
            "has_labels": self.labels is not None,
            "label_count": int(self.labels.unique().numel()) if self.labels is not None else None,
            "has_assignments": self.assignments is not None,
            "has_images": images,
            "feature_spaces": self.feature_dims(),
        }

    def to_float(self, device: torch.device | str, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``indices`` (all when None) as float32 (B, C, H, W) in [0, 1] on ``device``.

        The uint8 slice moves to the device first (4x less traffic), then is converted there.
        """
        if self.images is None:
            raise CoreInputError("images", "the dataset has no images (only precomputed features)")
        batch = self.images if indices is None else self.images[indices.to(self.images.device)]
        batch = batch.to(device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
