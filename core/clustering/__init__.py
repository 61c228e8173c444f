"""Base clusterings: k-means in torch and ``run_base``, which yields the pseudo-labels RUC refines."""

from core.clustering.kmeans import KMeansResult, assign, kmeans, soft_assign

__all__ = ["KMeansResult", "assign", "kmeans", "soft_assign"]
