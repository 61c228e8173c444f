"""The network of a feature job: an MLP head on frozen precomputed features (B, D).

Input vectors are standardised per dimension inside ``forward`` (the dataset's mean and standard
deviation, persistent buffers, so a saved network carries them), then Linear(D, hidden),
BatchNorm, ReLU form the trunk (the ``backbone`` of a ClusteringModel, which RUC copies from the
base network as it copies a CNN) and a linear head maps to K clusters. Adversarial attacks and the
views of core.augment.features work on the raw vectors, as they work on [0, 1] pixels for images.
"""

from __future__ import annotations

import torch
from torch import nn

from core.models.heads import ClusteringModel

FEATURE_BACKBONE = "mlp"
# A dimension whose spread is below this share of the largest is treated as constant (std 1), so
# float rounding in it is not blown up by the standardisation.
_CONSTANT_DIM = 1e-6


def feature_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (population) standard deviation of x (N, D), float32 (D,) each,
    accumulated in float64 over chunks so large N neither loses precision nor doubles memory."""
    n, d = x.shape
    s1 = torch.zeros(d, dtype=torch.float64, device=x.device)
    s2 = torch.zeros(d, dtype=torch.float64, device=x.device)
    for part in x.split(65536):
        p = part.double()
        s1 += p.sum(0)
        s2 += (p * p).sum(0)
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()


class FeatureClusteringModel(ClusteringModel):
    """(x - mean) / std -> Linear(D, hidden) -> BatchNorm1d -> ReLU -> ``nheads`` Linear(hidden, K)."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        num_clusters: int,
        *,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        nheads: int = 1,
    ) -> None:
        trunk = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU())
        trunk.backbone_name = FEATURE_BACKBONE  # type: ignore[assignment]  # read by ClusteringModel
        super().__init__(trunk, hidden_dim, num_clusters, nheads=nheads)
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        m = torch.zeros(in_dim) if mean is None else mean.detach().float().flatten().cpu()
        s = torch.ones(in_dim) if std is None else std.detach().float().flatten().cpu()
        if m.numel() != in_dim or s.numel() != in_dim:
            raise ValueError(f"mean and std must have {in_dim} values, got {m.numel()} and {s.numel()}")
        s = torch.where(s > _CONSTANT_DIM * s.max().clamp_min(1e-30), s, torch.ones_like(s))
        # Re-registered as persistent: unlike an image network's (SCAN-layout) statistics, these
        # belong to the saved model.
        self.register_buffer("mean", m.view(1, in_dim).clone(), persistent=True)
        self.register_buffer("std", s.view(1, in_dim).clone(), persistent=True)

    def layout(self) -> dict[str, int]:
        """What ``from_layout`` needs to rebuild this network before loading its state dict."""
        return {"in_dim": self.in_dim, "hidden_dim": self.hidden_dim, "num_clusters": self.num_clusters}

    @classmethod
    def from_layout(cls, layout: dict[str, int]) -> FeatureClusteringModel:
        return cls(int(layout["in_dim"]), int(layout["hidden_dim"]), int(layout["num_clusters"]))
