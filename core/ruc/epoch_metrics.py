"""What each RUC epoch reports: losses, schedule values, clean-set size and, with labels, its quality.

Labels are evaluation-only: they are read here, after the epoch's training and refurbishing,
and never reach a loss, a target or a selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.metrics import clean_set_quality, hungarian_match


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def refurbish_quality(
    clean: np.ndarray, pseudo: np.ndarray, initial_clean: np.ndarray, y: np.ndarray, num_clusters: int
) -> dict[str, Any]:
    """Quality of the refurbished set R (initially unclean samples that are clean now), Fig. 4.

    Clusters are mapped to classes by the Hungarian matching of the current pseudo-labels.
    precision: share of R whose label is correct; recall: share of the initially unclean samples
    that are in R with a correct label. Both are cumulative over the run so far.
    """
    mapping = hungarian_match(y, pseudo, num_clusters)
    correct = mapping[pseudo] == y
    refurbished = clean & ~initial_clean
    n_ref, n_unclean = int(refurbished.sum()), int((~initial_clean).sum())
    hits = int((refurbished & correct).sum())
    precision = hits / n_ref if n_ref else None
    recall = hits / n_unclean if n_unclean else None
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall), "size": n_ref}


def label_metrics(
    clean: torch.Tensor, pseudo: torch.Tensor, initial_clean: torch.Tensor, y: np.ndarray, num_clusters: int
) -> dict[str, Any]:
    """clean_* (the clean set as a detector of correct pseudo-labels, Table 3) and refurbished_*."""
    c, p, ic = clean.cpu().numpy(), pseudo.cpu().numpy(), initial_clean.cpu().numpy()
    q = clean_set_quality(c, p, y, num_clusters)
    r = refurbish_quality(c, p, ic, y, num_clusters)
    return {
        "clean_precision": q["precision"],
        "clean_recall": q["recall"],
        "clean_f1": q["f1"],
        "refurbished_precision": r["precision"],
        "refurbished_recall": r["recall"],
        "refurbished_f1": r["f1"],
    }
