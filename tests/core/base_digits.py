"""scikit-learn's digits as the base-method tests read them, and their accuracy helper."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from core.clustering.base import pca_features
from core.metrics import cluster_accuracy


def digits_with_pca() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(images01 (N, 1, 8, 8), PCA-30 features (N, 30), labels (N,))."""
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    feats, _ = pca_features(x, 30)
    return x, feats, d.target


def hungarian_acc(y: np.ndarray, pred: torch.Tensor) -> float:
    """Hungarian accuracy of ``pred`` against the 10 digit classes."""
    return cluster_accuracy(y, pred.cpu().numpy(), 10)
