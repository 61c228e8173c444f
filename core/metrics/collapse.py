"""Label-free warning signs that a refinement collapsed (its clusters degenerated).

A refinement is compared with the base clustering it started from; no labels are read:

* agreement: share of samples whose refined cluster, Hungarian-aligned to the base clusters, is
  their base cluster. RUC relabels the noisy part of the pseudo-labels (on digits about 5-20%);
  a refinement that changes most of them has not refined them.
* normalised_confidence: (mean max prob - 1/K) / (1 - 1/K), 0 for uniform outputs, 1 for one-hot.
* new_empty_clusters: clusters with members in the base that the refinement leaves empty.
* merged_clusters: refined clusters that receive the majority (> half) of two or more base
  clusters' members.
* size_entropy_ratio: entropy of the refined cluster sizes / entropy of the base's. One cluster
  swallowing the data drives it to 0.

A sign fires when its figure crosses its bound in ``COLLAPSE_BOUNDS``; ``suspected`` is True when
any fires.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import CoreInputError
from core.metrics._checks import cluster_array
from core.metrics.clustering import contingency, hungarian_match

__all__ = ["COLLAPSE_BOUNDS", "assignment_agreement", "collapse_signs"]

# Each figure's bound: a sign fires below the lower bounds and at or above the counts.
COLLAPSE_BOUNDS: dict[str, float] = {
    "agreement": 0.5,
    "normalised_confidence": 0.2,
    "new_empty_clusters": 1,
    "merged_clusters": 1,
    "size_entropy_ratio": 0.8,
}
_COUNTS = ("new_empty_clusters", "merged_clusters")


def assignment_agreement(
    base_pred: np.ndarray, refined_pred: np.ndarray, num_clusters: int
) -> dict[str, Any]:
    """Agreement of two clusterings of the same N samples (N,) ints in [0, num_clusters).

    aligned: share equal after the Hungarian map refined -> base; raw: share equal as numbered;
    mapping: (num_clusters,) refined cluster -> base cluster (-1 unmatched).
    """
    b = cluster_array(base_pred, "base_pred", num_clusters)
    r = cluster_array(refined_pred, "refined_pred", num_clusters, n=b.shape[0])
    mapping = hungarian_match(b, r, num_clusters)
    aligned = np.where(mapping[r] >= 0, mapping[r], -1)
    return {
        "aligned": float((aligned == b).mean()) if b.size else 1.0,
        "raw": float((r == b).mean()) if b.size else 1.0,
        "mapping": [int(v) for v in mapping],
    }


def _entropy(sizes: np.ndarray) -> float:
    p = sizes[sizes > 0] / max(int(sizes.sum()), 1)
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: no -0.0 for a single cluster


def collapse_signs(base_pred: np.ndarray, refined_probs: np.ndarray, *, num_clusters: int) -> dict[str, Any]:
    """The warning signs of the module docstring for refined probabilities (N, K) vs base clusters (N,).

    Returns {figures: {name: value}, bounds, fired: [{sign, value, bound, message}], suspected}.
    """
    p = np.asarray(refined_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != num_clusters:
        raise CoreInputError("refined_probs", f"expected shape (N, {num_clusters}), got {p.shape}")
    refined = p.argmax(axis=1)
    base = cluster_array(base_pred, "base_pred", num_clusters, n=p.shape[0])
    k = num_clusters
    base_sizes = np.bincount(base, minlength=k)
    refined_sizes = np.bincount(refined, minlength=k)
    table = contingency(refined, base, k)  # (K base, K refined): rows are "true" = base
    majority_of = table.argmax(axis=1)  # base cluster -> refined cluster holding most of it
    has_majority = table.max(axis=1) * 2 > base_sizes
    receivers = np.bincount(majority_of[(base_sizes > 0) & has_majority], minlength=k)
    h_base = _entropy(base_sizes)
    figures: dict[str, Any] = {
        "agreement": assignment_agreement(base, refined, k)["aligned"],
        "normalised_confidence": float((p.max(axis=1).mean() - 1 / k) / (1 - 1 / k)) if p.size else None,
        "new_empty_clusters": int(((refined_sizes == 0) & (base_sizes > 0)).sum()),
        "merged_clusters": int((receivers >= 2).sum()),
        "size_entropy_ratio": _entropy(refined_sizes) / h_base if h_base > 0 else None,
    }
    fired = []
    for name, bound in COLLAPSE_BOUNDS.items():
        value = figures[name]
        is_count = name in _COUNTS
        if value is None or (value < bound if is_count else value >= bound):
            continue
        fired.append({"sign": name, "value": value, "bound": bound, "message": _message(name, value, bound)})
    return {"figures": figures, "bounds": dict(COLLAPSE_BOUNDS), "fired": fired, "suspected": bool(fired)}


def _message(name: str, value: float, bound: float) -> str:
    return {
        "agreement": f"only {value:.0%} of the samples keep their base cluster (bound {bound:.0%})",
        "normalised_confidence": f"outputs are near uniform (normalised confidence {value:.2f} < {bound})",
        "new_empty_clusters": f"{int(value)} cluster(s) with base members are empty after refinement",
        "merged_clusters": f"{int(value)} refined cluster(s) each absorb the majority of 2+ base clusters",
        "size_entropy_ratio": f"cluster sizes collapsed (entropy ratio {value:.2f} < {bound})",
    }[name]
