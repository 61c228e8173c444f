"""The in-memory dataset: one uint8 (N, H, W, C) tensor plus optional labels and assignments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from core.datasets.limits import ArchiveLimits as ArchiveLimits  # re-exported
from core.errors import CoreInputError


@dataclass
class ImageDataset:
    """An image dataset held in memory.

    images: uint8 (N, H, W, C), C in {1, 3}.
    labels: int64 (N,) evaluation labels (never used for training), or None.
    class_names: name of each label value (archive class folders), or None.
    assignments: uploaded base clustering, int64 (N,) cluster ids or float32 (N, K) probabilities.
    notes: what the loader did that the user should know (skipped files, converted modes).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    assignments: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Cheap structural checks only; value checks live in validation.py and run on load.
        im = self.images
        if im.dtype != torch.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3) or im.shape[0] == 0:
            raise CoreInputError(
                "images",
                "must be a non-empty uint8 (N, H, W, C) tensor, C in {1, 3}; "
                f"got {im.dtype} {tuple(im.shape)}",
            )
        n = im.shape[0]
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
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def facts(self) -> dict[str, Any]:
        """JSON-serialisable summary shown to the client after validation."""
        return {
            "count": self.n,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "has_labels": self.labels is not None,
            "label_count": int(self.labels.unique().numel()) if self.labels is not None else None,
            "has_assignments": self.assignments is not None,
        }

    def to_float(self, device: torch.device | str, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``indices`` (all when None) as float32 (B, C, H, W) in [0, 1] on ``device``.

        The uint8 slice moves to the device first (4x less traffic), then is converted there.
        """
        batch = self.images if indices is None else self.images[indices.to(self.images.device)]
        batch = batch.to(device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
