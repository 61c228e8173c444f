"""Clean-set selection (RUC section 3.1) and the per-cluster fallback.

confidence: max_k p_ik > tau1 (the base classifier's own confidence).
metric:     the majority pseudo-label among the k nearest neighbours in an embedding space
            (a non-parametric kNN classifier) equals the sample's own pseudo-label.
hybrid:     both.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from core.errors import CoreInputError
from core.sampling.knn import knn_indices

__all__ = [
    "Strategy",
    "confidence_mask",
    "knn_majority",
    "metric_mask",
    "select_clean",
    "ensure_clean_per_cluster",
]

Strategy = Literal["confidence", "metric", "hybrid"]


def confidence_mask(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) bool: max_k probs[i, k] > threshold. probs: (N, K) rows sum to 1."""
    return probs.max(dim=1).values > threshold


def knn_majority(neighbour_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Majority label (N,) of each row of neighbour_labels (N, k), neighbours ordered nearest first.

    Ties go to the tied label whose nearest member comes first, i.e. the label of the closest
    neighbour among the tied ones: deterministic and independent of label numbering.
    """
    n, k = neighbour_labels.shape
    dev = neighbour_labels.device
    counts = torch.zeros(n, num_classes, dtype=torch.long, device=dev)
    counts.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels))
    first = torch.full((n, num_classes), k, dtype=torch.long, device=dev)
    pos = torch.arange(k, device=dev).expand(n, k)
    first.scatter_reduce_(1, neighbour_labels, pos, reduce="amin")
    # count dominates; among equal counts the smaller first position wins (all positions distinct).
    score = counts * (k + 1) + (k - first)
    return score.argmax(dim=1)


def metric_mask(
    pseudo: torch.Tensor, embedding: torch.Tensor, k: int, *, num_classes: int, chunk_size: int = 4096
) -> torch.Tensor:
    """(N,) bool: kNN majority label in ``embedding`` (N, D) equals ``pseudo`` (N,)."""
    nbrs = knn_indices(embedding, k, chunk_size=chunk_size)  # (N, k)
    majority = knn_majority(pseudo[nbrs], num_classes)
    return majority == pseudo


def select_clean(
    strategy: Strategy,
    *,
    probs: torch.Tensor,
    pseudo: torch.Tensor,
    embedding: torch.Tensor | None,
    threshold: float,
    k: int,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Clean mask (N,) bool by the RUC sampling strategy (section 3.1).

    probs: (N, K) base confidences, rows sum to 1. pseudo: (N,) int64 pseudo-labels in [0, K).
    embedding: (N, D), needed by metric and hybrid. threshold: tau1. k: neighbours (<= N-1).
    """
    if probs.ndim != 2 or pseudo.shape != (probs.shape[0],):
        raise ValueError(
            f"probs must be (N, K) and pseudo (N,); got {tuple(probs.shape)}, {tuple(pseudo.shape)}"
        )
    num_classes = probs.shape[1]
    pseudo = pseudo.to(device=probs.device, dtype=torch.long)
    if strategy == "confidence":
        return confidence_mask(probs, threshold)
    if strategy not in ("metric", "hybrid"):
        raise CoreInputError("refine.strategy", f"unknown sampling strategy {strategy!r}")
    if embedding is None:
        raise CoreInputError(
            "refine.strategy", f"strategy {strategy!r} needs an embedding; none is available"
        )
    if embedding.shape[0] != probs.shape[0]:
        raise ValueError(f"embedding has {embedding.shape[0]} rows, probs {probs.shape[0]}")
    metric = metric_mask(
        pseudo, embedding.to(probs.device), k, num_classes=num_classes, chunk_size=chunk_size
    )
    if strategy == "metric":
        return metric
    return metric & confidence_mask(probs, threshold)


def ensure_clean_per_cluster(
    mask: torch.Tensor,
    pseudo: torch.Tensor,
    confidence: torch.Tensor,
    *,
    min_per_cluster: int,
    fraction: float,
    num_clusters: int | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Guarantee every cluster some clean samples, so RUC has labels for every class.

    mask: (N,) bool clean set. pseudo: (N,) int64. confidence: (N,) float (max prob).
    A cluster with fewer than ``min_per_cluster`` clean samples gets its
    ``max(min_per_cluster, ceil(fraction * size))`` most confident members (capped at its size)
    added. If the clean set is entirely empty, every cluster gets this fallback (with at least
    one member each) because training without any labeled sample is undefined.
    Returns (new mask, notes); each note names a cluster and how many samples were added.
    Clusters with no members at all (when ``num_clusters`` is given) are reported, not fixed.
    """
    if not (mask.shape == pseudo.shape == confidence.shape) or mask.ndim != 1:
        raise ValueError("mask, pseudo and confidence must all be (N,)")
    out = mask.clone().bool()
    notes: list[str] = []
    k = int(num_clusters) if num_clusters is not None else int(pseudo.max()) + 1 if pseudo.numel() else 0
    all_empty = not bool(out.any())
    if all_empty and pseudo.numel():
        notes.append("the clean set was empty; every cluster falls back to its most confident members")
    need = max(min_per_cluster, 1) if all_empty else min_per_cluster
    sizes = torch.bincount(pseudo, minlength=k)
    clean = torch.bincount(pseudo[out], minlength=k)
    for c in range(k):
        size = int(sizes[c])
        if size == 0:
            if num_clusters is not None:
                notes.append(f"cluster {c}: has no members, so it has no clean samples")
            continue
        have = int(clean[c])
        if have >= need and not all_empty:
            continue
        n_take = min(size, max(need, math.ceil(fraction * size)))
        members = torch.nonzero(pseudo == c).flatten()
        order = torch.argsort(confidence[members], descending=True, stable=True)
        top = members[order[:n_take]]
        added = int((~out[top]).sum())
        out[top] = True
        notes.append(
            f"cluster {c}: {have} clean sample(s) < {need}; added its {added} most confident member(s) "
            f"(top {n_take} of {size} by confidence)"
        )
    return out, notes
