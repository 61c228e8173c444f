"""Top-down estimators: X-means and G-means grow k from k_min by splitting clusters in two.

xmeans  X-means (Pelleg & Moore 2000): a cluster splits when the BIC of its two 2-means children
        (identical spherical Gaussians) beats the parent's.
gmeans  G-means (Hamerly & Elkan 2003): a cluster splits when its points, projected on the axis
        joining its two 2-means children, fail the Anderson-Darling normality test
        (A*^2 = A^2 (1 + 4/n - 25/n^2) > 1.8692, significance 1e-4).

Both run rounds: every cluster is tested, the ones that pass are replaced by their children
(largest statistic first while room is left under k_max), then Lloyd runs on all data from the new
centres ("improve-params"). A round that finds no cluster to split ends the search (``stopped``:
"converged"). When k reaches k_max the clusters are tested once more: if any still wants to split,
the estimator was cut off by the bound (``stopped``: "k_max, still splitting"), its vote is not a
vote for k_max (core.clustering.autok.consensus censors it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr

from core.clustering.autok._common import ITERS, RESTARTS
from core.clustering.kmeans import assign, kmeans

# G-means critical value of A*^2 for significance 1e-4 (Hamerly & Elkan 2003).
GMEANS_CRITICAL = 1.8692

# members (R, D), parent centre (1, D), seed -> (statistic, children centres (2, D)) if it splits.
SplitTest = Callable[[torch.Tensor, torch.Tensor, int], tuple[float, torch.Tensor] | None]


def _bic(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> float:
    """BIC of identical spherical Gaussians (Pelleg & Moore 2000, section 2.1) for x (R, M).

    The log-likelihood at the MLE: sum_n R_n log(R_n / R) - R M / 2 log(2 pi var) - M (R - K) / 2,
    with var = SSE / (M (R - K)) the pooled per-dimension variance (the paper prints the last term
    without the factor M; with it the Gaussian exponent sums to SSE / (2 var)). Free parameters:
    K - 1 mixing weights, M K centre coordinates, one variance."""
    r, m = x.shape
    k = centroids.shape[0]
    if r <= k:
        return -math.inf
    sse = float(((x - centroids[labels]) ** 2).sum())
    var = max(sse / (m * (r - k)), 1e-12)
    counts = torch.bincount(labels, minlength=k).double()
    counts = counts[counts > 0]
    loglik = float(
        (counts * torch.log(counts)).sum()
        - r * math.log(r)
        - r * m / 2 * math.log(2 * math.pi * var)
        - m * (r - k) / 2
    )
    n_params = (k - 1) + m * k + 1
    return loglik - n_params / 2 * math.log(r)


def _two_means(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """2-means of x (R, D): (labels (R,), centres (2, D)); None when too few points to split."""
    if x.shape[0] < 4:
        return None
    km = kmeans(x, 2, restarts=2, iters=ITERS, seed=seed)
    return km.labels, km.centroids


def _lloyd_from(x: torch.Tensor, init: torch.Tensor, iters: int = ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd iterations from given centres; empty clusters are dropped. Returns (labels, centroids)."""
    c = init.clone()
    for _ in range(iters):
        labels, _ = assign(x, c)
        counts = torch.bincount(labels, minlength=c.shape[0])
        keep = counts > 0
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        new = sums[keep] / counts[keep, None].to(x.dtype)
        done = new.shape == c.shape and bool(torch.allclose(new, c, atol=1e-6))
        c = new
        if done:
            break
    labels, _ = assign(x, c)
    return labels, c


def _bic_split(members: torch.Tensor, centre: torch.Tensor, seed: int) -> tuple[float, torch.Tensor] | None:
    split = _two_means(members, seed)
    if split is None:
        return None
    parent = _bic(members, torch.zeros(members.shape[0], dtype=torch.long), centre)
    child = _bic(members, split[0], split[1])
    return (child - parent, split[1]) if child > parent else None


def anderson_darling(z: np.ndarray) -> float:
    """A*^2 = A^2 (1 + 4/n - 25/n^2) of 1-D samples z against a normal with estimated mean and std."""
    z = np.sort(np.asarray(z, dtype=np.float64))
    n = z.size
    std = z.std(ddof=1)
    if n < 8 or std <= 0:
        return 0.0
    cdf = np.clip(ndtr((z - z.mean()) / std), 1e-12, 1 - 1e-12)
    i = np.arange(1, n + 1)
    a2 = -n - np.mean((2 * i - 1) * (np.log(cdf) + np.log1p(-cdf[::-1])))
    return float(a2 * (1 + 4 / n - 25 / n**2))


def _ad_split(members: torch.Tensor, centre: torch.Tensor, seed: int) -> tuple[float, torch.Tensor] | None:
    del centre  # the test looks only at the children's axis
    split = _two_means(members, seed)
    if split is None:
        return None
    v = split[1][0] - split[1][1]
    vv = float(v @ v)
    if vv <= 0:
        return None
    a2 = anderson_darling((members @ v / vv).double().numpy())
    return (a2, split[1]) if a2 > GMEANS_CRITICAL else None


def split_search(
    x: torch.Tensor, k_min: int, k_max: int, test: SplitTest, *, seed: int
) -> tuple[int, dict[str, Any]]:
    """Grow k from k_min by rounds of ``test``-approved 2-splits (module docstring); x (N, D).

    Returns (k, info) with info["history"] (k after each round), info["stopped"] ("converged" or
    "k_max, still splitting") and info["wanted_splits"] (clusters that passed the test in the
    last round: 0 when converged)."""
    km = kmeans(x, k_min, restarts=RESTARTS, iters=ITERS, seed=seed)
    centroids, labels = km.centroids, km.labels
    history = [k_min]
    while True:
        found: list[tuple[float, int, torch.Tensor]] = []
        for c in range(centroids.shape[0]):
            res = test(x[labels == c], centroids[c : c + 1], seed + c)
            if res is not None:
                found.append((res[0], c, res[1]))
        room = k_max - centroids.shape[0]
        if not found or room <= 0:
            break
        found.sort(key=lambda f: -f[0])
        split_ids = {f[1] for f in found[:room]}
        init = torch.cat(
            [centroids[c : c + 1] for c in range(centroids.shape[0]) if c not in split_ids]
            + [f[2] for f in found[:room]]
        )
        before = centroids.shape[0]
        labels, centroids = _lloyd_from(x, init)
        history.append(int(centroids.shape[0]))
        if centroids.shape[0] <= before:  # Lloyd emptied the new clusters: splitting cannot progress
            found = []
            break
    stopped = "converged" if not found else "k_max, still splitting"
    return int(centroids.shape[0]), {"history": history, "stopped": stopped, "wanted_splits": len(found)}


def xmeans_k(x: torch.Tensor, k_min: int, k_max: int, *, seed: int) -> tuple[int, dict[str, Any]]:
    """X-means from k_min centres; rounds of BIC-guided 2-splits until none helps or k_max."""
    return split_search(x, k_min, k_max, _bic_split, seed=seed)


def gmeans_k(x: torch.Tensor, k_min: int, k_max: int, *, seed: int) -> tuple[int, dict[str, Any]]:
    """G-means from k_min centres: split clusters that fail the Anderson-Darling test, until none or k_max."""
    return split_search(x, k_min, k_max, _ad_split, seed=seed)
