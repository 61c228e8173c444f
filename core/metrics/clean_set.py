"""Quality of a clean-set selection (RUC Sec. 4, Table 3) against ground truth."""

from __future__ import annotations

import numpy as np

from core.errors import CoreInputError
from core.metrics._checks import cluster_array, labels_array
from core.metrics.clustering import hungarian_match


def clean_set_quality(
    clean_mask: np.ndarray, pseudo_labels: np.ndarray, y_true: np.ndarray, num_clusters: int
) -> dict:
    """Precision, recall and F1 of the clean set as a detector of correctly pseudo-labelled samples.

    clean_mask: (N,) bool; pseudo_labels: (N,) clusters in [0, num_clusters); y_true: (N,) labels.
    Pseudo-labels are mapped to classes by the Hungarian matching of pseudo vs true; a sample is
    correctly labelled when its mapped pseudo-label equals its class. precision = correct among
    clean, recall = clean among correct. Undefined ratios (empty clean set, nothing correct) are None.
    Returns {precision, recall, f1, size, correct_total}.
    """
    t = labels_array(y_true, "y_true")
    p = cluster_array(pseudo_labels, "pseudo_labels", num_clusters, n=t.shape[0])
    mask = np.asarray(clean_mask)
    if mask.shape != t.shape:
        raise CoreInputError("clean_mask", f"expected shape {t.shape}, got {mask.shape}")
    mask = mask.astype(bool)
    mapping = hungarian_match(t, p, num_clusters)
    correct = mapping[p] == t  # (N,)
    size = int(mask.sum())
    hits = int((mask & correct).sum())
    n_correct = int(correct.sum())
    precision = hits / size if size else None
    recall = hits / n_correct if n_correct else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "precision": None if precision is None else float(precision),
        "recall": None if recall is None else float(recall),
        "f1": None if f1 is None else float(f1),
        "size": size,
        "correct_total": n_correct,
    }
