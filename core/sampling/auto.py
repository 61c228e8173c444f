"""The default clean-set rule ``auto``: the paper's hybrid where the base network is confident
enough for tau1, a per-cluster ranking where it is not. Label-free.

Why: tau1 = 0.99 presumes an overconfident base network (the paper's SCAN models). An
underconfident one (a base fitted for few epochs, a calibrated upload) has few or no samples above
it: on digits, k-means + a small CNN fitted for 5 epochs has mean confidence 0.59 and no sample
above 0.99, so hybrid selects nothing and the per-cluster fallback hands RUC 10% of each cluster.

Rule, per non-empty cluster c of the pseudo-labels (size n_c):

1. hybrid_c = members that pass the hybrid test (kNN majority agrees and confidence > tau1).
   If |hybrid_c| >= min_fraction * n_c, the cluster's clean samples are hybrid_c (the paper).
2. Otherwise its clean samples are its ceil(cluster_fraction * n_c) members with the highest
   score = kNN agreement ratio + confidence, among those whose kNN majority agrees (metric).
   Both terms are in [0, 1]; ranking inside the cluster makes the rule independent of the
   network's calibration, and the quota per cluster keeps every cluster represented.

kNN agreement ratio: the share of a sample's k nearest neighbours (cosine, in the embedding)
carrying its pseudo-label. Measured on digits (bench/clean_set_rule.py): see the README.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from core.sampling.knn import knn_indices
from core.sampling.strategies import knn_majority, select_clean

__all__ = ["auto_clean", "select_clean_set"]


def _neighbour_votes(
    pseudo: torch.Tensor, embedding: torch.Tensor | None, k: int, num_classes: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(majority agrees (N,) bool, agreement ratio (N,) float); without an embedding: all True, 1."""
    if embedding is None:
        return torch.ones_like(pseudo, dtype=torch.bool), torch.ones(pseudo.shape, device=pseudo.device)
    nbrs = knn_indices(embedding.to(pseudo.device), k, chunk_size=chunk_size)  # (N, k)
    labels = pseudo[nbrs]
    agrees = knn_majority(labels, num_classes) == pseudo
    ratio = (labels == pseudo[:, None]).float().mean(dim=1)
    return agrees, ratio


def auto_clean(
    probs: torch.Tensor,
    pseudo: torch.Tensor,
    embedding: torch.Tensor | None,
    *,
    threshold: float,
    k: int,
    min_fraction: float,
    cluster_fraction: float,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Clean mask (N,) bool by the ``auto`` rule (module docstring) and the decision behind it.

    probs: (N, K) base confidences, rows sum to 1. pseudo: (N,) int64 in [0, K). embedding: (N, D)
    or None (then the metric terms are dropped: every sample agrees, ratio 1). threshold: tau1.
    k: neighbours (<= N-1). min_fraction, cluster_fraction: in (0, 1].
    The decision dict holds the rule's label-free inputs and, per cluster, which branch it took.
    """
    pseudo = pseudo.to(device=probs.device, dtype=torch.long)
    n, num_classes = probs.shape
    conf = probs.max(dim=1).values.float()
    agrees, ratio = _neighbour_votes(pseudo, embedding, k, num_classes, chunk_size)
    hybrid = agrees & (conf > threshold)
    score = ratio + conf
    mask = torch.zeros(n, dtype=torch.bool, device=probs.device)
    by_hybrid: list[int] = []
    by_rank: list[int] = []
    for c in range(num_classes):
        members = torch.nonzero(pseudo == c).flatten()
        size = int(members.numel())
        if size == 0:
            continue
        chosen = members[hybrid[members]]
        if chosen.numel() >= min_fraction * size:
            by_hybrid.append(c)
        else:
            by_rank.append(c)
            cand = members[agrees[members]]
            take = min(int(cand.numel()), math.ceil(cluster_fraction * size))
            order = torch.argsort(score[cand], descending=True, stable=True)
            chosen = cand[order[:take]]
        mask[chosen] = True
    decision = {
        "inputs": {
            "confidence_threshold": threshold,
            "knn_k": k if embedding is not None else None,
            "min_fraction": min_fraction,
            "cluster_fraction": cluster_fraction,
            "mean_confidence": float(conf.mean()) if n else None,
            "fraction_above_threshold": float((conf > threshold).float().mean()) if n else None,
            "hybrid_fraction": float(hybrid.float().mean()) if n else None,
            "metric_fraction": float(agrees.float().mean()) if n else None,
            "mean_knn_agreement": float(ratio.mean()) if n else None,
        },
        "selected": "hybrid" if not by_rank else ("ranked" if not by_hybrid else "mixed"),
        "clusters_hybrid": by_hybrid,
        "clusters_ranked": by_rank,
        "reason": _reason(by_hybrid, by_rank, min_fraction, threshold),
    }
    return mask, decision


STRATEGY_REASONS = {
    "metric": "refine.strategy 'metric' (the default): a sample is clean when the majority pseudo-label of "
    "its k nearest neighbours in the embedding agrees with its own; it does not depend on how confident "
    "the base network is",
    "confidence": "refine.strategy 'confidence': the base network's max probability exceeds tau1",
    "hybrid": "refine.strategy 'hybrid' (the paper's): both the confidence and the kNN test pass",
}


def _reason(by_hybrid: list[int], by_rank: list[int], min_fraction: float, threshold: float) -> str:
    share = f"{min_fraction:.0%} of their members"
    if not by_rank:
        return f"every cluster has >= {share} confident above tau1={threshold} and kNN-consistent: hybrid"
    ranked = f"{len(by_rank)} cluster(s) {by_rank[:20]} have < {share} passing hybrid at tau1={threshold}"
    if not by_hybrid:
        return f"{ranked} (none has enough): each keeps its best-ranked members (kNN agreement + confidence)"
    return f"{ranked}: those keep their best-ranked members; the other {len(by_hybrid)} use hybrid"


def select_clean_set(
    strategy: str,
    *,
    probs: torch.Tensor,
    pseudo: torch.Tensor,
    embedding: torch.Tensor | None,
    threshold: float,
    k: int,
    min_fraction: float,
    cluster_fraction: float,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Clean mask (N,) bool by ``strategy`` (``auto`` or one of ``select_clean``'s) and its decision.

    Shapes as ``auto_clean``. For an explicit strategy the decision says it was asked for.
    """
    if strategy == "auto":
        return auto_clean(
            probs,
            pseudo,
            embedding,
            threshold=threshold,
            k=k,
            min_fraction=min_fraction,
            cluster_fraction=cluster_fraction,
            chunk_size=chunk_size,
        )
    mask = select_clean(
        strategy,  # type: ignore[arg-type]
        probs=probs,
        pseudo=pseudo,
        embedding=embedding,
        threshold=threshold,
        k=k,
        chunk_size=chunk_size,
    )
    return mask, {"selected": strategy, "reason": STRATEGY_REASONS[strategy]}
