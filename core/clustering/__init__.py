"""Base clusterings: k-means in torch and ``run_base``, which yields the pseudo-labels RUC refines."""

from core.clustering.base import BaseOutput, run_base
from core.clustering.kmeans import KMeansResult, assign, kmeans, soft_assign

__all__ = ["BaseOutput", "KMeansResult", "assign", "kmeans", "run_base", "soft_assign"]
