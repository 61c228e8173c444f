"""What RUC's passes read, for images or for a feature space: rows of the data and their two views.

The trainer never looks at pixels itself: it asks a ``Views`` for the float rows of a batch and
for weak (phi_a) and strong (phi_A) views of them, so Algorithm 1 runs unchanged on uint8 images
(N, H, W, C) with the image recipes of core.augment and on float32 features (N, D) with the
feature views of core.augment.features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from core.augment import strong_view, weak_view
from core.augment.features import feature_view
from core.models.feature_head import feature_statistics
from core.models.inference import to_layout, u8_to_float
from core.spec import FeatureViewsSpec, RefineSpec


class Views(Protocol):
    def rows(self, data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor: ...

    def weak(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class ImageViews:
    """uint8 images -> float (B, C, H, W) in [0, 1]; the spec's augmentation recipe."""

    spec: RefineSpec
    channels_last: bool

    def rows(self, data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return u8_to_float(data, idx, self.channels_last)

    def weak(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return to_layout(weak_view(x, recipe=self.spec.augmentation, generator=generator), self.channels_last)

    def strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.spec
        view = strong_view(
            x, recipe=s.augmentation, n=s.randaugment_n, m=s.randaugment_m, generator=generator
        )
        return to_layout(view, self.channels_last)


@dataclass(frozen=True)
class FeatureViews:
    """float32 features (N, D) -> rows as they are; dropout-to-mean + scaled Gaussian noise views."""

    mean: torch.Tensor  # (D,) per-dimension dataset mean
    std: torch.Tensor  # (D,) per-dimension dataset standard deviation
    cfg: FeatureViewsSpec

    @classmethod
    def of(cls, features: torch.Tensor, cfg: FeatureViewsSpec) -> FeatureViews:
        mean, std = feature_statistics(features)
        return cls(mean=mean, std=std, cfg=cfg)

    def rows(self, data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return data.index_select(0, idx).float()

    def weak(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.cfg
        return feature_view(
            x, mean=self.mean, std=self.std, dropout=c.weak_dropout, noise=c.weak_noise, generator=generator
        )

    def strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.cfg
        return feature_view(
            x,
            mean=self.mean,
            std=self.std,
            dropout=c.strong_dropout,
            noise=c.strong_noise,
            generator=generator,
        )


def is_feature_input(data: torch.Tensor) -> bool:
    """True for a feature job's float (N, D) matrix, False for uint8 (N, H, W, C) images."""
    return data.is_floating_point() and data.dim() == 2
