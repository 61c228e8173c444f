"""Clustering and embedding models with SCAN's state-dict layout.

``backbone.*``, ``cluster_head.<i>.*`` and ``contrastive_head.*`` are exactly SCAN's key names, so
SCAN/self-label/SimCLR checkpoints load without renaming. Inputs are float images in [0, 1]; the
normalisation ``(x - mean) / std`` happens inside ``forward`` through non-persistent buffers, which
keeps the state dict SCAN-compatible and lets adversarial attacks work in [0, 1] pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreInputError

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25


def _stat_buffer(values: Sequence[float] | float | None, default: float, name: str) -> torch.Tensor:
    """(1, C, 1, 1) or (1, 1, 1, 1) float32 tensor; a single value broadcasts over channels."""
    if values is None:
        values = default
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() not in (1, 3) or not torch.isfinite(t).all():
        raise CoreInputError(name, f"must be 1 or 3 finite values, got {t.tolist()}")
    if name == "std" and (t <= 0).any():
        raise CoreInputError(name, f"must be positive, got {t.tolist()}")
    return t.view(1, -1, 1, 1)


class _Normalised(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] | float | None, std: Sequence[float] | float | None) -> None:
        super().__init__()
        # persistent=False: SCAN's checkpoints have no such keys and ours must load into SCAN's code.
        self.register_buffer("mean", _stat_buffer(mean, DEFAULT_MEAN, "mean"), persistent=False)
        self.register_buffer("std", _stat_buffer(std, DEFAULT_STD, "std"), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, C, H, W) standardised."""
        return (x - self.mean) / self.std


class ClusteringModel(_Normalised):
    """Backbone + ``nheads`` linear cluster heads (SCAN). ``forward`` uses head ``active_head``.

    Args:
        backbone: module mapping (B, C, H, W) -> (B, backbone_dim).
        backbone_dim: D.
        num_clusters: K.
        nheads: number of heads (SCAN trains 10 and keeps the lowest-loss one).
        mean, std: per-channel (or single) normalisation statistics of [0, 1] inputs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        num_clusters: int,
        *,
        nheads: int = 1,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ) -> None:
        super().__init__(mean, std)
        if num_clusters < 1:
            raise CoreInputError("num_clusters", f"must be >= 1, got {num_clusters}")
        if nheads < 1:
            raise CoreInputError("nheads", f"must be >= 1, got {nheads}")
        self.backbone = backbone
        self.backbone_dim = backbone_dim
        self.num_clusters = num_clusters
        self.nheads = nheads
        self.backbone_name: str | None = getattr(backbone, "backbone_name", None)
        self.cluster_head = nn.ModuleList(nn.Linear(backbone_dim, num_clusters) for _ in range(nheads))
        self.active_head = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, D) backbone features."""
        return self.backbone(self.normalise(x))

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats: (B, D) -> (B, K) logits of head ``active_head``."""
        return self.cluster_head[self.active_head](feats)

    def all_head_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, C, H, W) in [0, 1] -> one (B, K) logit tensor per head (SCAN's ``forward``)."""
        feats = self.features(x)
        return [head(feats) for head in self.cluster_head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, K) logits."""
        return self.head_logits(self.features(x))


class EmbeddingModel(_Normalised):
    """Backbone + SCAN's SimCLR ``mlp`` head: Linear(D, D), ReLU, Linear(D, features_dim); with
    ``projection=False`` no head (``contrastive_head`` is the identity, features_dim = D), as for a
    bare ViT whose embedding is its backbone feature.

    ``forward``: (B, C, H, W) in [0, 1] -> (B, features_dim), rows L2-normalised.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        *,
        features_dim: int = 128,
        projection: bool = True,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ) -> None:
        super().__init__(mean, std)
        self.backbone = backbone
        self.backbone_dim = backbone_dim
        self.features_dim = features_dim if projection else backbone_dim
        self.backbone_name: str | None = getattr(backbone, "backbone_name", None)
        self.contrastive_head: nn.Module = (
            nn.Sequential(
                nn.Linear(backbone_dim, backbone_dim), nn.ReLU(), nn.Linear(backbone_dim, features_dim)
            )
            if projection
            else nn.Identity()
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, D) backbone features (before the projection head)."""
        return self.backbone(self.normalise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, features_dim), unit L2 norm."""
        return F.normalize(self.contrastive_head(self.features(x)), dim=1)
