"""Automatic cluster count: five estimators vote, a consensus decides (``base.auto_k`` of the spec).

Every estimator runs on the same seeded random sample of at most ``sample_cap`` rows of the
features and its vote is clipped to ``[k_min, k_max]`` (and to the sample size).

silhouette  k-means for every k in [k_min, k_max]; the k with the largest mean silhouette
            (Rousseeuw 1987; Euclidean distances, computed in row chunks).
eigengap    spectral: a symmetric kNN affinity graph with self-tuning Gaussian weights
            (sigma_i = distance to the 7th neighbour, Zelnik-Manor & Perona 2004), the eigenvalues
            lambda_1 <= lambda_2 <= ... of its normalised Laplacian; K = argmax_k (lambda_{k+1} - lambda_k).
xmeans      X-means (Pelleg & Moore 2000): from k_min centres, split each cluster in two by 2-means
            when the children's BIC (identical spherical Gaussians) beats the parent's; re-run
            k-means on all data after each round of splits; stop when nothing splits or k_max.
gmeans      G-means (Hamerly & Elkan 2003): a cluster splits when its points, projected on the axis
            joining its two 2-means children, fail the Anderson-Darling normality test
            (A*^2 = A^2 (1 + 4/n - 25/n^2) > 1.8692, significance 1e-4).
dpmeans     DP-means (Kulis & Jordan 2012): a point farther than lambda (squared distance) from
            every centre opens a new cluster. Lambda, when the spec gives none: DP-means runs over
            a geometric grid of lambdas spanning the squared covering radii of a farthest-first
            traversal (the deterministic limit of k-means++ seeding), and the vote is the count in
            [k_min, k_max] that persists over the most grid points (the widest log-lambda range),
            as cluster lifetimes are read in hierarchical clustering.
consensus   median: the lower median of the votes (the middle one for an odd count);
            mode: the most frequent vote; a tie between several most frequent values is broken by
            the lower median of the tied values. Both are robust to one estimator running away
            (x-means and g-means over-split in many dimensions).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr

from core.clustering.kmeans import assign, kmeans
from core.hooks import RunHooks
from core.spec import AutoKSpec

__all__ = [
    "AutoKResult",
    "anderson_darling",
    "consensus_vote",
    "dpmeans",
    "eigengap_k",
    "estimate_k",
    "gmeans_k",
    "silhouette_k",
    "silhouette_score",
    "spectral_embedding",
    "xmeans_k",
]

# k-means restarts inside the estimators: enough for a stable vote, cheap enough for k_max ~ 50.
_RESTARTS = 3
_ITERS = 50
# G-means critical value of A*^2 for significance 1e-4 (Hamerly & Elkan 2003).
_GMEANS_CRITICAL = 1.8692
# Self-tuning spectral clustering's neighbour index for sigma_i.
_SIGMA_NEIGHBOUR = 7
_GRAPH_KNN = 10
# Dense eigendecomposition up to this many points; scipy's Lanczos (eigsh) above.
_DENSE_EIG_MAX = 3000
_DP_MAX_ITER = 50
# Lambda grid points of the DP-means lifetime criterion.
_DP_GRID = 16


@dataclass
class AutoKResult:
    """k: the consensus count. votes: estimator -> its (clipped) vote. details: per-estimator facts
    (score curves, lambda, ...), JSON-serialisable. sample_size: rows the estimators saw."""

    k: int
    votes: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)
    sample_size: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "votes": dict(self.votes),
            "sample_size": self.sample_size,
            "details": self.details,
        }


# ----------------------------------------------------------------------------------------------
# silhouette
# ----------------------------------------------------------------------------------------------


def silhouette_score(x: torch.Tensor, labels: torch.Tensor, *, chunk_size: int = 2048) -> float:
    """Mean silhouette of x (N, D) under labels (N,) int64, Euclidean; singletons score 0.

    Row chunks of the (N, N) distance matrix are reduced to per-cluster sums with a one-hot matmul,
    so memory is O(chunk_size * N)."""
    n = x.shape[0]
    k = int(labels.max()) + 1
    onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # (N, K)
    sizes = onehot.sum(0)  # (K,)
    x_sq = (x * x).sum(1)
    total = 0.0
    for s in range(0, n, chunk_size):
        xb, lb = x[s : s + chunk_size], labels[s : s + chunk_size]
        d = (x_sq[s : s + chunk_size, None] - 2 * xb @ x.T + x_sq[None, :]).clamp_min_(0).sqrt_()  # (B, N)
        sums = d @ onehot  # (B, K)
        own = sizes[lb]
        a = sums.gather(1, lb[:, None]).squeeze(1) / (own - 1).clamp_min(1)
        other = sums / sizes[None, :].clamp_min(1)
        other.scatter_(1, lb[:, None], float("inf"))
        b = other.min(1).values
        sil = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
        sil = torch.where(own > 1, sil, torch.zeros_like(sil))
        total += float(sil.sum())
    return total / n


def silhouette_k(x: torch.Tensor, k_min: int, k_max: int, *, seed: int) -> tuple[int, dict[str, Any]]:
    """argmax_k of the mean silhouette of k-means with k clusters, k in [k_min, k_max]."""
    scores: dict[int, float] = {}
    for k in range(k_min, k_max + 1):
        km = kmeans(x, k, restarts=_RESTARTS, iters=_ITERS, seed=seed)
        scores[k] = silhouette_score(x, km.labels)
    best = max(scores, key=lambda kk: (scores[kk], -kk))
    return best, {"scores": {str(k): round(v, 5) for k, v in scores.items()}}


# ----------------------------------------------------------------------------------------------
# eigengap
# ----------------------------------------------------------------------------------------------


def _knn_dists(x: torch.Tensor, k: int, *, chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (N, k) and indices (N, k) of each row's k nearest other rows."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    dists = torch.empty(n, k, dtype=x.dtype)
    idx = torch.empty(n, k, dtype=torch.long)
    for s in range(0, n, chunk_size):
        d = (x_sq[s : s + chunk_size, None] - 2 * x[s : s + chunk_size] @ x.T + x_sq[None, :]).clamp_min_(0)
        rows = torch.arange(d.shape[0])
        d[rows, rows + s] = float("inf")
        v, i = d.topk(k, dim=1, largest=False)
        dists[s : s + chunk_size] = v.sqrt()
        idx[s : s + chunk_size] = i
    return dists, idx


def _normalised_affinity(x: torch.Tensor) -> Any:
    """D^-1/2 W D^-1/2 (scipy CSR, float64) of the symmetric self-tuning kNN graph of x (N, D)."""
    from scipy import sparse

    n = x.shape[0]
    nn_k = min(_GRAPH_KNN, n - 1)
    dists, idx = _knn_dists(x.float().cpu(), nn_k)
    sigma = dists[:, min(_SIGMA_NEIGHBOUR, nn_k) - 1].clamp_min(1e-12)  # (N,)
    rows = torch.arange(n)[:, None].expand(n, nn_k)
    w = torch.exp(-(dists**2) / (sigma[:, None] * sigma[idx]))  # (N, k)
    a = sparse.coo_matrix(
        (w.flatten().double().numpy(), (rows.flatten().numpy(), idx.flatten().numpy())), (n, n)
    )
    a = a.maximum(a.T).tocsr()  # symmetric kNN graph: an edge when either end lists the other
    deg = np.asarray(a.sum(1)).ravel()
    dinv = sparse.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    return (dinv @ a @ dinv).tocsr()


def _top_eigen(m: Any, count: int, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``count`` largest eigenvalues (descending) of symmetric m, and eigenvectors (N, count)."""
    from scipy.sparse.linalg import eigsh

    n = m.shape[0]
    if n <= _DENSE_EIG_MAX:
        if vectors:
            vals, vecs = np.linalg.eigh(m.toarray())
            return vals[::-1][:count], vecs[:, ::-1][:, :count]
        return np.linalg.eigvalsh(m.toarray())[::-1][:count], None
    if vectors:
        vals, vecs = eigsh(m, k=count, which="LA", tol=1e-6, v0=np.ones(n))
        order = np.argsort(vals)[::-1]
        return vals[order], vecs[:, order]
    vals = eigsh(m, k=count, which="LA", return_eigenvectors=False, tol=1e-6, v0=np.ones(n))
    return np.sort(vals)[::-1], None


def spectral_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Laplacian eigenmap of x (N, D): the ``dim`` leading eigenvectors of the normalised affinity
    of the self-tuning kNN graph, rows L2-normalised (Ng, Jordan & Weiss 2001). (N, dim) float32.

    Deterministic: dense LAPACK up to 3000 points, Lanczos from a fixed start vector above; each
    eigenvector's sign is fixed (largest |entry| positive)."""
    m = _normalised_affinity(x)
    _, vecs = _top_eigen(m, min(dim, x.shape[0] - 1), vectors=True)
    assert vecs is not None
    sign = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(sign == 0, 1.0, sign)
    v = torch.from_numpy(np.ascontiguousarray(vecs)).float()
    return torch.nn.functional.normalize(v, dim=1)


def eigengap_k(x: torch.Tensor, k_min: int, k_max: int) -> tuple[int, dict[str, Any]]:
    """Largest gap lambda_{k+1} - lambda_k of the normalised Laplacian's spectrum, k in [k_min, k_max]."""
    n = x.shape[0]
    m = _normalised_affinity(x)  # L = I - M has eigenvalues 1 - mu
    n_eig = min(k_max + 1, n - 1)
    mu, _ = _top_eigen(m, n_eig, vectors=False)
    lam = 1.0 - mu  # ascending Laplacian eigenvalues lambda_1..lambda_n_eig
    gaps = {k: float(lam[k] - lam[k - 1]) for k in range(k_min, min(k_max, n_eig - 1) + 1)}
    if not gaps:
        return k_min, {"eigenvalues": [round(float(v), 6) for v in lam]}
    best = max(gaps, key=lambda kk: (gaps[kk], -kk))
    return best, {"eigenvalues": [round(float(v), 6) for v in lam], "graph_knn": min(_GRAPH_KNN, n - 1)}


# ----------------------------------------------------------------------------------------------
# x-means
# ----------------------------------------------------------------------------------------------


def _bic(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> float:
    """BIC of identical spherical Gaussians (Pelleg & Moore 2000, section 2.1) for x (R, M)."""
    r, m = x.shape
    k = centroids.shape[0]
    if r <= k:
        return -math.inf
    sse = float(((x - centroids[labels]) ** 2).sum())
    var = max(sse / (m * (r - k)), 1e-12)  # per-dimension variance
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
    if x.shape[0] < 4:
        return None
    km = kmeans(x, 2, restarts=2, iters=_ITERS, seed=seed)
    return km.labels, km.centroids


def xmeans_k(x: torch.Tensor, k_min: int, k_max: int, *, seed: int) -> tuple[int, dict[str, Any]]:
    """X-means from k_min centres; rounds of BIC-guided 2-splits until none helps or k_max."""
    km = kmeans(x, k_min, restarts=_RESTARTS, iters=_ITERS, seed=seed)
    centroids, labels = km.centroids, km.labels
    history = [k_min]
    while centroids.shape[0] < k_max:
        gains: list[tuple[float, int, torch.Tensor]] = []
        for c in range(centroids.shape[0]):
            members = x[labels == c]
            split = _two_means(members, seed + c)
            if split is None:
                continue
            parent = _bic(members, torch.zeros(members.shape[0], dtype=torch.long), centroids[c : c + 1])
            child = _bic(members, split[0], split[1])
            if child > parent:
                gains.append((child - parent, c, split[1]))
        if not gains:
            break
        gains.sort(key=lambda g: -g[0])
        gains = gains[: k_max - centroids.shape[0]]
        split_ids = {g[1] for g in gains}
        new = [centroids[c : c + 1] for c in range(centroids.shape[0]) if c not in split_ids]
        new += [g[2] for g in gains]
        init = torch.cat(new)
        # "Improve-params": Lloyd on all data from the split centres (a single restart from init).
        labels, centroids = _lloyd_from(x, init)
        history.append(int(centroids.shape[0]))
    return int(centroids.shape[0]), {"history": history}


def _lloyd_from(
    x: torch.Tensor, init: torch.Tensor, iters: int = _ITERS
) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------------------------
# g-means
# ----------------------------------------------------------------------------------------------


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


def gmeans_k(x: torch.Tensor, k_min: int, k_max: int, *, seed: int) -> tuple[int, dict[str, Any]]:
    """G-means from k_min centres: split clusters that fail the Anderson-Darling test, until none or k_max."""
    km = kmeans(x, k_min, restarts=_RESTARTS, iters=_ITERS, seed=seed)
    centroids, labels = km.centroids, km.labels
    history = [k_min]
    while centroids.shape[0] < k_max:
        stats: list[tuple[float, int, torch.Tensor]] = []
        for c in range(centroids.shape[0]):
            members = x[labels == c]
            split = _two_means(members, seed + c)
            if split is None:
                continue
            v = split[1][0] - split[1][1]
            vv = float(v @ v)
            if vv <= 0:
                continue
            proj = (members @ v / vv).double().numpy()
            a2 = anderson_darling(proj)
            if a2 > _GMEANS_CRITICAL:
                stats.append((a2, c, split[1]))
        if not stats:
            break
        stats.sort(key=lambda s: -s[0])
        stats = stats[: k_max - centroids.shape[0]]
        split_ids = {s[1] for s in stats}
        init = torch.cat(
            [centroids[c : c + 1] for c in range(centroids.shape[0]) if c not in split_ids]
            + [s[2] for s in stats]
        )
        labels, centroids = _lloyd_from(x, init)
        history.append(int(centroids.shape[0]))
    return int(centroids.shape[0]), {"history": history}


# ----------------------------------------------------------------------------------------------
# DP-means
# ----------------------------------------------------------------------------------------------


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
    """DP-means vote; with ``lam`` None, the count that survives the widest range of lambda.

    DP-means' count K(lambda) falls in steps as lambda grows. Lambda runs over a geometric grid
    spanning the squared farthest-first covering radii (r_(k_max+1)^2 / 2 up to r_1^2, scales at
    which between ~every point and one cluster open); the vote is the K in [k_min, k_max] seen on
    the most grid points (its lifetime in log-lambda), ties to the smaller K; that K's median lambda
    is reported."""
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
    else:  # every grid point over- or under-splits: the nearest bound
        vote = k_max if min(ks) > k_max else k_min
    chosen = [g for g, k in zip(grid, ks, strict=True) if k == vote]
    info["lambda"] = float(np.median(chosen)) if chosen else None
    return vote, info


# ----------------------------------------------------------------------------------------------
# consensus and driver
# ----------------------------------------------------------------------------------------------


def consensus_vote(votes: list[int], how: str = "median") -> int:
    """median: the lower median of ``votes``; mode: the most frequent vote, ties by the lower median
    of the tied values."""
    if not votes:
        raise ValueError("no votes")
    if how == "mode":
        counts = Counter(votes)
        top = max(counts.values())
        votes = [v for v in counts if counts[v] == top]
    elif how != "median":
        raise ValueError(f"unknown consensus {how!r}")
    ordered = sorted(votes)
    return ordered[(len(ordered) - 1) // 2]


def estimate_k(
    x: torch.Tensor, spec: AutoKSpec, *, seed: int = 0, hooks: RunHooks | None = None
) -> AutoKResult:
    """Estimate the cluster count of features x (N, D) (see module docstring).

    Runs on CPU in float32 on a seeded sample of at most ``spec.sample_cap`` rows; reports progress
    after each estimator and honours ``hooks.should_stop``."""
    hooks = hooks or RunHooks()
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"x must be (N >= 3, D); got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    if x.shape[0] > spec.sample_cap:
        x = x[torch.randperm(x.shape[0], generator=gen)[: spec.sample_cap]]
    n = x.shape[0]
    k_max = max(2, min(spec.k_max, n - 1))
    k_min = min(spec.k_min, k_max)
    votes: dict[str, int] = {}
    details: dict[str, Any] = {"k_min": k_min, "k_max": k_max}
    for i, name in enumerate(spec.estimators):
        hooks.check_stop(f"auto_k:{name}")
        if name == "silhouette":
            k, info = silhouette_k(x, k_min, k_max, seed=seed)
        elif name == "eigengap":
            k, info = eigengap_k(x, k_min, k_max)
        elif name == "xmeans":
            k, info = xmeans_k(x, k_min, k_max, seed=seed)
        elif name == "gmeans":
            k, info = gmeans_k(x, k_min, k_max, seed=seed)
        elif name == "dpmeans":
            k, info = dpmeans_k(x, k_min, k_max, lam=spec.dpmeans_lambda)
        else:  # pragma: no cover - AutoKSpec's Literal forbids it
            raise ValueError(f"unknown estimator {name!r}")
        votes[name] = int(min(max(k, k_min), k_max))
        details[name] = info
        hooks.on_progress((i + 1) / len(spec.estimators), None, None)
    k = consensus_vote(list(votes.values()), spec.consensus)
    details["consensus"] = spec.consensus
    return AutoKResult(k=k, votes=votes, details=details, sample_size=n)
