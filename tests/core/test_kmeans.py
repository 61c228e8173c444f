"""k-means: recovery of separated blobs, determinism, inertia vs scikit-learn, empty clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from core.clustering.kmeans import _lloyd, assign, kmeans


def _blobs(
    n: int = 600, k: int = 5, d: int = 8, std: float = 0.5, seed: int = 0, box: float = 20.0
) -> tuple[torch.Tensor, np.ndarray]:
    x, y = make_blobs(
        n_samples=n, centers=k, n_features=d, cluster_std=std, center_box=(-box, box), random_state=seed
    )
    return torch.from_numpy(x).float(), y


def test_recovers_well_separated_blobs() -> None:
    x, y = _blobs()
    res = kmeans(x, 5, restarts=3, seed=0)
    assert adjusted_rand_score(y, res.labels.numpy()) == pytest.approx(1.0)
    assert res.centroids.shape == (5, 8)
    assert torch.bincount(res.labels, minlength=5).min() > 0


def test_probs_rows_sum_to_one_and_argmax_matches_labels() -> None:
    x, _ = _blobs(std=3.0, seed=1, box=4.0)  # overlapping blobs so probs are not all one-hot
    res = kmeans(x, 5, restarts=2, seed=0)
    assert res.probs.shape == (600, 5)
    assert torch.allclose(res.probs.sum(1), torch.ones(600), atol=1e-5)
    assert torch.equal(res.probs.argmax(1), res.labels)
    # The temperature is the mean squared distance to the assigned centroid.
    _, mind = assign(x, res.centroids)
    assert res.temperature == pytest.approx(float(mind.mean()), rel=1e-4)
    conf = res.probs.max(1).values
    assert float(conf.min()) > 1 / 5
    assert float(conf.max() - conf.min()) > 0.2  # overlapping points are less confident than central ones
    sep = kmeans(_blobs()[0], 5, restarts=2, seed=0)
    assert float(sep.probs.max(1).values.mean()) > 0.99  # separated blobs: confident


def test_deterministic_by_seed() -> None:
    x, _ = _blobs(std=4.0, seed=2)
    a = kmeans(x, 6, restarts=2, seed=7)
    b = kmeans(x, 6, restarts=2, seed=7)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inertia_not_worse_than_sklearn(seed: int) -> None:
    x, _ = _blobs(n=1000, k=8, d=10, std=2.5, seed=seed)
    ours = kmeans(x, 8, restarts=10, seed=seed)
    ref = KMeans(n_clusters=8, n_init=10, random_state=seed).fit(x.numpy().astype(np.float64))
    assert ours.inertia <= ref.inertia_ * 1.01
    # The reported inertia is the true sum of squared distances of the returned assignment.
    true = float(((x - ours.centroids[ours.labels]) ** 2).sum())
    assert ours.inertia == pytest.approx(true, rel=1e-4)


def test_empty_cluster_is_reseeded_at_far_point() -> None:
    # Two tight groups and a lone far point; one initial centroid sits where no point is nearest.
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [30.0, 30.0]])
    init = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-100.0, -100.0]])
    labels, centroids, inertia, _ = _lloyd(x, init, iters=20, tol_abs=0.0, chunk_size=2)
    counts = torch.bincount(labels, minlength=3)
    assert counts.min() >= 1
    # The empty centroid moved onto the farthest point, which is now its own cluster.
    assert labels[5] != labels[0] and labels[5] != labels[3]
    assert torch.allclose(centroids[labels[5]], x[5])
    assert inertia == pytest.approx(0.04 / 3 + 0.005, rel=1e-3)  # two tight groups + a singleton


def test_more_clusters_than_distinct_points_still_fills_every_cluster() -> None:
    x = torch.tensor([[0.0], [0.0], [1.0], [2.0], [3.0]])
    res = kmeans(x, 4, restarts=2, seed=0)
    assert torch.bincount(res.labels, minlength=4).min() >= 1
    assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_chunked_assignment_equals_full() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 16, generator=g)
    c = torch.randn(7, 16, generator=g)
    l1, d1 = assign(x, c, chunk_size=64)
    full = torch.cdist(x.double(), c.double()) ** 2
    assert torch.equal(l1, full.argmin(1))
    assert torch.allclose(d1.double(), full.min(1).values, rtol=1e-4, atol=1e-3)


def test_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        kmeans(torch.zeros(3, 2), 4)
