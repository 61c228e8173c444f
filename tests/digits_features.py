"""Precomputed embeddings built here, without downloads: a PCA of scikit-learn's digits.

The "embedding model" is the top principal components of the flattened 8x8 pixels (fitted on the
1,797 images themselves), the kind of fixed feature vectors a client computes elsewhere (CLIP,
DINOv2) and uploads as ``features``. Shared by the core, API-less and live-service tests.
"""

from __future__ import annotations

import io

import numpy as np


def digits_pca_features(dim: int = 32, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N, dim) PCA projections of the digits' pixels in [0, 1], and int64 (N,) labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float64) / 16.0
    x -= x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    feats = (x @ vt[:dim].T).astype(np.float32)
    labels = d.target.astype(np.int64)
    if n is not None:
        feats, labels = feats[:n], labels[:n]
    return feats, labels


def digits_features_npz(dim: int = 32, n: int | None = None, space: str = "pca") -> bytes:
    """The same as an uploadable npz: ``features_<space>`` and ``labels``, no images."""
    feats, labels = digits_pca_features(dim, n)
    buf = io.BytesIO()
    np.savez(buf, **{f"features_{space}": feats, "labels": labels})
    return buf.getvalue()
