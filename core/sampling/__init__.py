"""Clean/unclean split of the pseudo-labels (RUC section 3.1), the default ``auto`` rule and the kNN."""

from core.sampling.auto import auto_clean, select_clean_set
from core.sampling.knn import knn_indices
from core.sampling.strategies import (
    Strategy,
    confidence_mask,
    ensure_clean_per_cluster,
    knn_majority,
    metric_mask,
    select_clean,
)

__all__ = [
    "auto_clean",
    "Strategy",
    "confidence_mask",
    "ensure_clean_per_cluster",
    "knn_indices",
    "knn_majority",
    "metric_mask",
    "select_clean",
    "select_clean_set",
]
