"""k-means in PyTorch: k-means++ seeding, Lloyd iterations, restarts.

Runs wherever ``x`` lives (CPU or GPU). Distances are computed chunk by chunk as
``||x||^2 - 2 x.c + ||c||^2`` with a matmul, so the largest intermediate is
``(chunk_size, K)``; an ``(N, K, D)`` tensor is never formed.

Confidences (``probs``) for the pseudo-labels are a softmax over negative squared
distances with a temperature estimated from the data::

    p_ik = softmax_k(-||x_i - c_k||^2 / T),   T = inertia / N

i.e. T is the mean squared distance of a point to its own centroid. A point that
sits at a typical distance from its centroid and one typical distance further
from the next centroid gets odds of e:1; the scale is invariant to rescaling
the features. The argmax of ``probs`` is the nearest centroid, i.e. ``labels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["KMeansResult", "kmeans", "assign", "soft_assign"]


@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    labels: (N,) int64 index of the nearest centroid.
    centroids: (K, D) float32.
    inertia: sum of squared distances of the points to their centroid.
    probs: (N, K) float32, rows sum to 1, argmax == labels (see module docstring).
    n_iter: Lloyd iterations run by the restart that was kept.
    temperature: T of the softmax that gives ``probs``.
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: float
    probs: torch.Tensor
    n_iter: int
    temperature: float


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (B, K) between rows of x (B, D) and c (K, D); x_sq = ||x||^2 (B,)."""
    d = x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def assign(
    x: torch.Tensor, centroids: torch.Tensor, *, chunk_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row of ``x``.

    x: (N, D), centroids: (K, D). Returns (labels (N,) int64, squared distance to that centroid (N,)).
    Memory: one (chunk_size, K) block at a time.
    """
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    mind = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, chunk_size):
        xb = x[s : s + chunk_size]
        d = _sq_dists(xb, (xb * xb).sum(1), centroids)
        m, a = d.min(1)
        labels[s : s + chunk_size] = a
        mind[s : s + chunk_size] = m
    return labels, mind


def soft_assign(
    x: torch.Tensor, centroids: torch.Tensor, temperature: float, *, chunk_size: int = 8192
) -> torch.Tensor:
    """probs (N, K) = softmax(-||x - c||^2 / temperature) row by row, chunked."""
    out = torch.empty(x.shape[0], centroids.shape[0], dtype=torch.float32, device=x.device)
    t = max(float(temperature), 1e-12)
    for s in range(0, x.shape[0], chunk_size):
        xb = x[s : s + chunk_size]
        d = _sq_dists(xb, (xb * xb).sum(1), centroids)
        out[s : s + chunk_size] = torch.softmax(-d / t, dim=1).float()
    return out


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator, chunk_size: int) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; greedy variant as in scikit-learn):
    each new centroid is the best of 2 + log(k) candidates drawn with probability ~ D(x)^2.
    Returns (K, D)."""
    n = x.shape[0]
    n_trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=gen, device=gen.device).item())
    centers = [x[first]]
    closest = _sq_dists(x, x_sq, x[first : first + 1]).squeeze(1)  # (N,)
    for _ in range(1, k):
        total = closest.sum()
        if float(total) <= 0.0:
            # Fewer distinct points than clusters: any point is as good as another.
            cand = torch.randint(n, (n_trials,), generator=gen, device=gen.device)
        else:
            cand = torch.multinomial(closest / total, n_trials, replacement=True, generator=gen)
        cand = cand.to(x.device)
        best_pot, best_c, best_closest = None, None, None
        for c in cand.tolist():
            new_closest = torch.minimum(closest, _sq_dists(x, x_sq, x[c : c + 1]).squeeze(1))
            pot = float(new_closest.sum())
            if best_pot is None or pot < best_pot:
                best_pot, best_c, best_closest = pot, c, new_closest
        assert best_c is not None and best_closest is not None
        centers.append(x[best_c])
        closest = best_closest
    return torch.stack(centers)


def _update(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid means (K, D) and counts (K,); empty clusters get a zero row (repaired by the caller)."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    return sums / counts.clamp_min(1)[:, None].to(x.dtype), counts


def _repair_empty(
    x: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor, mind: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Re-seed every empty cluster at one of the points farthest from their centroid.

    Each empty cluster takes a different far point (the largest ``mind`` first), which is
    the point contributing most to the inertia, so moving a centroid onto it lowers the inertia.
    Returns (centroids, number repaired)."""
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel() == 0:
        return centroids, 0
    far = torch.argsort(mind, descending=True, stable=True)[: empty.numel()]
    centroids = centroids.clone()
    centroids[empty[: far.numel()]] = x[far]
    return centroids, int(empty.numel())


def _lloyd(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    iters: int,
    tol_abs: float,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Lloyd iterations from ``centroids``; returns (labels, centroids, inertia, n_iter).

    Stops when the summed squared centroid shift is <= tol_abs. The returned labels and
    inertia are those of the returned centroids."""
    k = centroids.shape[0]
    n_iter = 0
    for it in range(iters):
        n_iter = it + 1
        labels, mind = assign(x, centroids, chunk_size=chunk_size)
        new, counts = _update(x, labels, k)
        new, n_fixed = _repair_empty(x, new, counts, mind)
        shift = float(((new - centroids) ** 2).sum())
        centroids = new
        if shift <= tol_abs and n_fixed == 0:
            break
    labels, mind = assign(x, centroids, chunk_size=chunk_size)
    # An empty cluster can survive the last repair only if points coincide; one more
    # repair+assign keeps every returned cluster non-empty when N >= K distinct points exist.
    counts = torch.bincount(labels, minlength=k)
    if bool((counts == 0).any()):
        centroids, _ = _repair_empty(x, centroids, counts, mind)
        labels, mind = assign(x, centroids, chunk_size=chunk_size)
    return labels, centroids, float(mind.double().sum()), n_iter


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    restarts: int = 10,
    iters: int = 100,
    seed: int = 0,
    device: str | torch.device | None = None,
    tol: float = 1e-4,
    chunk_size: int = 8192,
) -> KMeansResult:
    """k-means with greedy k-means++ seeding and ``restarts`` independent runs (best inertia kept).

    x: (N, D) float features; moved to ``device`` (default: x's device) as float32.
    tol: relative to the mean per-feature variance of x, as in scikit-learn: Lloyd stops when the
    summed squared centroid shift falls below ``tol * mean(var(x, dim=0))``.
    Deterministic for a given seed and device.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D); got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}]; got {k}")
    if restarts < 1 or iters < 1:
        raise ValueError("restarts and iters must be >= 1")
    dev = torch.device(device) if device is not None else x.device
    x = x.to(dev, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    tol_abs = tol * float(x.var(dim=0, unbiased=False).mean()) if n > 1 else 0.0
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)

    best: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
    for _ in range(restarts):
        init = _kmeans_pp(x, k, gen, chunk_size)
        run = _lloyd(x, init, iters=iters, tol_abs=tol_abs, chunk_size=chunk_size)
        if best is None or run[2] < best[2]:
            best = run
    assert best is not None
    labels, centroids, inertia, n_iter = best
    temperature = inertia / n if inertia > 0 else 1e-12
    probs = soft_assign(x, centroids, temperature, chunk_size=chunk_size)
    return KMeansResult(
        labels=labels,
        centroids=centroids,
        inertia=inertia,
        probs=probs,
        n_iter=n_iter,
        temperature=temperature,
    )
