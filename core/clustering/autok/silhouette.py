"""Silhouette estimator: the k in [k_min, k_max] whose k-means clustering has the largest mean
silhouette (Rousseeuw 1987; Euclidean distances, computed in row chunks)."""

from __future__ import annotations

from typing import Any

import torch

from core.clustering.autok._common import ITERS, RESTARTS
from core.clustering.kmeans import kmeans


def silhouette_score(x: torch.Tensor, labels: torch.Tensor, *, chunk_size: int = 2048) -> float:
    """Mean silhouette of x (N, D) under labels (N,) int64, Euclidean; singletons score 0.

    Row chunks of the (N, N) distance matrix are reduced to per-cluster sums with a one-hot matmul,
    so memory is O(chunk_size * N)."""
    n = x.shape[0]
    k = int(labels.max()) + 1
    onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # (N, K)
    sizes = onehot.sum(0)  # (K,)
    x_sq = (x * x).sum(1)
    total = 0.0
    for s in range(0, n, chunk_size):
        xb, lb = x[s : s + chunk_size], labels[s : s + chunk_size]
        d = (x_sq[s : s + chunk_size, None] - 2 * xb @ x.T + x_sq[None, :]).clamp_min_(0).sqrt_()  # (B, N)
        sums = d @ onehot  # (B, K)
        own = sizes[lb]
        a = sums.gather(1, lb[:, None]).squeeze(1) / (own - 1).clamp_min(1)
        other = sums / sizes[None, :].clamp_min(1)
        other.scatter_(1, lb[:, None], float("inf"))
        b = other.min(1).values
        sil = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
        sil = torch.where(own > 1, sil, torch.zeros_like(sil))
        total += float(sil.sum())
    return total / n


def silhouette_k(x: torch.Tensor, k_min: int, k_max: int, *, seed: int) -> tuple[int, dict[str, Any]]:
    """argmax_k of the mean silhouette of k-means with k clusters, k in [k_min, k_max]; x (N, D)."""
    scores: dict[int, float] = {}
    for k in range(k_min, k_max + 1):
        km = kmeans(x, k, restarts=RESTARTS, iters=ITERS, seed=seed)
        scores[k] = silhouette_score(x, km.labels)
    best = max(scores, key=lambda kk: (scores[kk], -kk))
    return best, {"scores": {str(k): round(v, 5) for k, v in scores.items()}}
