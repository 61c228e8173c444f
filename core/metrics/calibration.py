"""Expected calibration error (RUC Eq. 20) and its reliability diagram.

ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)| over M equal-width confidence bins. The bins
follow torchmetrics' ``multiclass_calibration_error`` (norm l1) exactly, so numbers are
comparable with the common implementation: boundaries linspace(0, 1, M+1), a confidence c goes
to bin bucketize(c, boundaries, right=True) - 1, i.e. bins are [lower, upper), and a confidence of
exactly 1.0 lands in one further bin of its own. The paper writes the bins as ((m-1)/M, m/M]; the
difference only touches confidences that sit exactly on a boundary.
"""

from __future__ import annotations

import numpy as np

from core.errors import CoreInputError


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, *, n_bins: int = 15
) -> tuple[float, list[dict]]:
    """ECE and reliability bins.

    confidences: (N,) float in [0, 1], the top-1 probability. correct: (N,) bool (or 0/1), whether
    the top-1 prediction is right. Returns (ece, bins) where bins has ``n_bins`` dicts (lower,
    upper, count, accuracy, confidence; accuracy/confidence None when empty), plus a final
    {lower: 1.0, upper: 1.0} bin when some confidence is exactly 1.0. ECE = 0.0 when N = 0.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    corr = np.asarray(correct)
    if conf.ndim != 1:
        raise CoreInputError("confidences", f"expected shape (N,), got {conf.shape}")
    if corr.shape != conf.shape:
        raise CoreInputError("correct", f"expected shape {conf.shape}, got {corr.shape}")
    if n_bins < 1:
        raise CoreInputError("n_bins", f"must be >= 1, got {n_bins}")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0):
        raise CoreInputError("confidences", "must be finite and in [0, 1]")
    corr = corr.astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, conf, side="right") - 1  # (N,), in [0, n_bins]
    nb = n_bins + 1
    count = np.bincount(idx, minlength=nb).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=nb)
    acc_sum = np.bincount(idx, weights=corr, minlength=nb)
    n = conf.size
    bins: list[dict] = []
    ece = 0.0
    for m in range(nb):
        if m == n_bins and count[m] == 0:
            break
        lower = float(edges[m])
        upper = float(edges[m + 1]) if m < n_bins else 1.0
        c = int(count[m])
        acc = float(acc_sum[m] / c) if c else None
        cf = float(conf_sum[m] / c) if c else None
        if c:
            ece += c / n * abs(acc - cf)
        bins.append({"lower": lower, "upper": upper, "count": c, "accuracy": acc, "confidence": cf})
    return float(ece), bins
