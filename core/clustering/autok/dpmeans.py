"""DP-means estimator (Kulis & Jordan 2012): a point farther than lambda (squared distance) from
every centre opens a new cluster.

Lambda, when the spec gives none: DP-means runs over a geometric grid of lambdas spanning the
squared covering radii of a farthest-first traversal (the deterministic limit of k-means++
seeding), and the vote is the count in [k_min, k_max] that persists over the most grid points (the
widest log-lambda range), as cluster lifetimes are read in hierarchical clustering.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch

from core.clustering.kmeans import assign

_DP_MAX_ITER = 50
# Lambda grid points of the lifetime criterion.
_DP_GRID = 16


def _farthest_first_radii(x: torch.Tensor, n_centres: int) -> list[float]:
    """Covering radii r_1 >= r_2 >= ... of a farthest-first traversal started at the point nearest
    the mean: r_k = max_i min_{j<=k} ||x_i - c_j||."""
    start = int(((x - x.mean(0)) ** 2).sum(1).argmin())
    closest = ((x - x[start]) ** 2).sum(1)
    radii = [math.sqrt(float(closest.max()))]
    for _ in range(1, n_centres):
        nxt = int(closest.argmax())
        closest = torch.minimum(closest, ((x - x[nxt]) ** 2).sum(1))
        radii.append(math.sqrt(float(closest.max())))
    return radii


def dpmeans(
    x: torch.Tensor, lam: float, *, max_iter: int = _DP_MAX_ITER, k_cap: int | None = None
) -> torch.Tensor:
    """DP-means with penalty ``lam`` (squared distance). x (N, D). Returns centroids (K, D).

    Batch variant: each pass assigns every point; the point farthest beyond lam (if any) opens one
    new cluster, then centroids are recomputed; repeat until nothing opens and assignments settle.
    ``k_cap`` bounds the number of clusters (the farthest point simply stays assigned)."""
    c = x.mean(0, keepdim=True)
    prev: torch.Tensor | None = None
    for _ in range(max_iter * 10):
        labels, mind = assign(x, c)
        far = int(mind.argmax())
        if float(mind[far]) > lam and (k_cap is None or c.shape[0] < k_cap):
            c = torch.cat([c, x[far : far + 1]])
            prev = None
            continue
        counts = torch.bincount(labels, minlength=c.shape[0])
        keep = counts > 0
        new = torch.zeros_like(c).index_add_(0, labels, x)[keep] / counts[keep, None].to(x.dtype)
        if prev is not None and torch.equal(prev, labels) and new.shape == c.shape:
            break
        prev = labels if bool(keep.all()) else None
        c = new
    return c


def dpmeans_k(x: torch.Tensor, k_min: int, k_max: int, *, lam: float | None) -> tuple[int, dict[str, Any]]:
    """DP-means vote on x (N, D); with ``lam`` None, the count that survives the widest range of lambda.

    DP-means' count K(lambda) falls in steps as lambda grows. Lambda runs over a geometric grid
    spanning the squared farthest-first covering radii (r_(k_max+1)^2 / 2 up to r_1^2, scales at
    which between ~every point and one cluster open); the vote is the K in [k_min, k_max] seen on
    the most grid points (its lifetime in log-lambda), ties to the smaller K; that K's median lambda
    is reported. info["raw_k"]: the count before clipping to the range (with ``lam`` given), or,
    when no grid point lands in the range, the nearest count seen."""
    info: dict[str, Any] = {}
    if lam is not None:
        c = dpmeans(x, lam, k_cap=4 * k_max)
        info.update({"lambda": float(lam), "raw_k": int(c.shape[0])})
        return int(c.shape[0]), info
    radii = _farthest_first_radii(x, min(k_max + 1, x.shape[0]))
    lo, hi = radii[-1] ** 2 / 2, radii[0] ** 2
    grid = np.geomspace(max(lo, 1e-12), max(hi, 2e-12), _DP_GRID).tolist()
    ks = [int(dpmeans(x, g, k_cap=4 * k_max).shape[0]) for g in grid]
    info["grid"] = [[round(g, 6), k] for g, k in zip(grid, ks, strict=True)]
    in_range = Counter(k for k in ks if k_min <= k <= k_max)
    if in_range:
        top = max(in_range.values())
        vote = min(k for k, c in in_range.items() if c == top)
        info["raw_k"] = vote
    else:  # every grid point over- or under-splits: the nearest bound
        vote = k_max if min(ks) > k_max else k_min
        info["raw_k"] = min(ks) if min(ks) > k_max else max(k for k in ks if k < k_min)
    chosen = [g for g, k in zip(grid, ks, strict=True) if k == vote]
    info["lambda"] = float(np.median(chosen)) if chosen else None
    return vote, info
