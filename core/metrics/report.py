"""One JSON-serialisable report of a soft clustering: quality, calibration, sizes."""

from __future__ import annotations

import numpy as np

from core.errors import CoreInputError
from core.metrics._checks import labels_array
from core.metrics.calibration import expected_calibration_error
from core.metrics.clustering import (
    aligned_confusion,
    ari,
    cluster_accuracy,
    hungarian_match,
    many_to_one_accuracy,
    nmi,
)

NO_LABELS = "dataset has no labels"


def clustering_report(
    probs: np.ndarray, y_true: np.ndarray | None, *, num_clusters: int, ece_bins: int = 15
) -> dict:
    """Metrics of cluster probabilities ``probs`` (N, K) float, rows summing to 1.

    Always: mean_confidence, cluster_sizes (K ints), confidence_histogram ({edges, counts} with
    ``ece_bins`` equal-width bins), num_samples. With labels y_true (N,) int: acc (Hungarian),
    nmi, ari, ece (Eq. 20, confidence = max prob, correct = Hungarian-mapped argmax == true),
    reliability, confusion (aligned, see ``aligned_confusion``), mapping (cluster -> class, -1
    when unmatched), num_classes and many_to_one_acc (each cluster labelled with its majority
    class: the figure of over-clustered jobs, K > #classes; >= acc always). Without
    labels those keys are None and ``unavailable_reason`` says why.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != num_clusters:
        raise CoreInputError("probs", f"expected shape (N, {num_clusters}), got {p.shape}")
    if p.size and not np.all(np.isfinite(p)):
        raise CoreInputError("probs", "contains NaN or infinity")
    n = p.shape[0]
    pred = p.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    conf = np.clip(p.max(axis=1), 0.0, 1.0) if n else np.zeros(0)
    edges = np.linspace(0.0, 1.0, ece_bins + 1)
    hist, _ = np.histogram(conf, bins=edges)
    report: dict = {
        "num_samples": int(n),
        "mean_confidence": float(conf.mean()) if n else None,
        "cluster_sizes": [int(c) for c in np.bincount(pred, minlength=num_clusters)],
        "confidence_histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]},
        "acc": None,
        "nmi": None,
        "ari": None,
        "ece": None,
        "reliability": None,
        "confusion": None,
        "mapping": None,
        "num_classes": None,
        "many_to_one_acc": None,
        "unavailable_reason": None,
    }
    if y_true is None:
        report["unavailable_reason"] = NO_LABELS
        return report
    t = labels_array(y_true, "y_true", n=n)
    if n == 0:
        report["unavailable_reason"] = "no samples"
        return report
    num_classes = int(np.unique(t).size)
    mapping = hungarian_match(t, pred, num_clusters)
    ece, bins = expected_calibration_error(conf, mapping[pred] == t, n_bins=ece_bins)
    report.update(
        acc=cluster_accuracy(t, pred, num_clusters),
        nmi=nmi(t, pred),
        ari=ari(t, pred),
        ece=ece,
        reliability=bins,
        confusion=aligned_confusion(t, pred, num_clusters),
        mapping=[int(v) for v in mapping],
        num_classes=num_classes,
        many_to_one_acc=many_to_one_accuracy(t, pred, num_clusters),
    )
    return report
