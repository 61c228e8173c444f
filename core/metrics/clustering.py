"""Clustering quality against ground-truth labels: Hungarian ACC, many-to-one ACC, NMI, ARI.

Labels are non-negative ints; clusters are ints in ``[0, num_clusters)``. Cluster and class
counts may differ. All results are plain Python numbers/lists (JSON-serialisable).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from core.metrics._checks import cluster_array, labels_array


def contingency(y_true: np.ndarray, y_pred: np.ndarray, num_clusters: int) -> np.ndarray:
    """(num_clusters, num_classes) int64 counts; num_classes = max label + 1."""
    t = labels_array(y_true, "y_true")
    p = cluster_array(y_pred, "y_pred", num_clusters, n=t.shape[0])
    num_classes = int(t.max()) + 1 if t.size else 1
    table = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def hungarian_match(y_true: np.ndarray, y_pred: np.ndarray, num_clusters: int) -> np.ndarray:
    """One-to-one cluster -> class map maximising the matched count (Kuhn-Munkres).

    Returns an int64 array of length ``num_clusters``; clusters left without a class (when there
    are more clusters than classes) map to -1.
    """
    table = contingency(y_true, y_pred, num_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_clusters: int) -> float:
    """Fraction of samples whose cluster's Hungarian partner is their class (ACC)."""
    table = contingency(y_true, y_pred, num_clusters)
    if table.sum() == 0:
        return 0.0
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def many_to_one_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_clusters: int) -> float:
    """Accuracy when each cluster is labelled with its majority class (for over-clustering)."""
    table = contingency(y_true, y_pred, num_clusters)
    if table.sum() == 0:
        return 0.0
    return float(table.max(axis=1).sum() / table.sum())


def aligned_confusion(y_true: np.ndarray, y_pred: np.ndarray, num_clusters: int) -> list[list[int]]:
    """Confusion matrix rows = true classes, columns = classes predicted via the Hungarian map.

    Shape (num_classes, num_classes + 1): the last column counts samples in clusters that have no
    class partner (only non-zero when num_clusters > num_classes).
    """
    table = contingency(y_true, y_pred, num_clusters)  # (K, L)
    num_classes = table.shape[1]
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping[rows] = cols
    target_col = np.where(mapping >= 0, mapping, num_classes)  # (K,)
    out = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for k in range(num_clusters):  # K is small; the counts come from the table
        out[:, target_col[k]] += table[k]
    return [[int(v) for v in row] for row in out]


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _table_of(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Contingency over the values that occur (labels of any range)."""
    t = labels_array(y_true, "y_true")
    p = labels_array(y_pred, "y_pred", n=t.shape[0])
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((int(ti.max(initial=-1)) + 1, int(pi.max(initial=-1)) + 1), dtype=np.float64)
    np.add.at(table, (ti, pi), 1.0)
    return table


def nmi(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Normalised mutual information, I(T; P) / mean(H(T), H(P)) (arithmetic, natural log)."""
    table = _table_of(y_true, y_pred)
    n = table.sum()
    if table.shape[0] == table.shape[1] and table.shape[0] <= 1:
        return 1.0  # both labelings are one block (or empty): identical partitions
    nz = table > 0
    pij = table[nz] / n
    pi = table.sum(axis=1, keepdims=True) / n
    pj = table.sum(axis=0, keepdims=True) / n
    outer = (pi @ pj)[nz]
    mi = float(max((pij * (np.log(pij) - np.log(outer))).sum(), 0.0))
    h = 0.5 * (_entropy(table.sum(axis=1)) + _entropy(table.sum(axis=0)))
    if mi == 0.0:
        return 0.0
    return float(mi / max(h, np.finfo(np.float64).eps))


def ari(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie), pair counting in float64 to avoid overflow."""
    table = _table_of(y_true, y_pred)
    n = table.sum()
    if n <= 1:
        return 1.0
    sum_sq = float((table**2).sum())
    a = table.sum(axis=1)
    b = table.sum(axis=0)
    # Pair confusion: tp = pairs together in both, fp/fn together in one only.
    tp = sum_sq - n
    fp = float((b**2).sum()) - sum_sq
    fn = float((a**2).sum()) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))
