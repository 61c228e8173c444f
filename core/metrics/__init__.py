"""Evaluation metrics (numpy/scipy): clustering accuracy, NMI, ARI, ECE, clean-set quality."""

from core.metrics.calibration import expected_calibration_error
from core.metrics.clean_set import clean_set_quality
from core.metrics.clustering import (
    aligned_confusion,
    ari,
    cluster_accuracy,
    contingency,
    hungarian_match,
    many_to_one_accuracy,
    nmi,
)
from core.metrics.report import NO_LABELS, clustering_report

__all__ = [
    "NO_LABELS",
    "aligned_confusion",
    "ari",
    "clean_set_quality",
    "cluster_accuracy",
    "clustering_report",
    "contingency",
    "expected_calibration_error",
    "hungarian_match",
    "many_to_one_accuracy",
    "nmi",
]
