"""Evaluation metrics (numpy/scipy): clustering accuracy, NMI, ARI, ECE, clean-set quality, collapse signs."""

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
from core.metrics.collapse import COLLAPSE_BOUNDS, assignment_agreement, collapse_signs
from core.metrics.report import NO_LABELS, clustering_report

__all__ = [
    "COLLAPSE_BOUNDS",
    "NO_LABELS",
    "aligned_confusion",
    "assignment_agreement",
    "collapse_signs",
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
