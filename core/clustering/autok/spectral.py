"""Eigengap estimator and the Laplacian eigenmap, both on a self-tuning kNN affinity graph.

The graph: each point's 10 nearest neighbours, Gaussian weights with local scales
w_ij = exp(-d_ij^2 / (sigma_i sigma_j)), sigma_i = distance to the 7th neighbour (Zelnik-Manor &
Perona 2004), symmetrised by the maximum, normalised M = D^-1/2 W D^-1/2. The Laplacian
L = I - M has eigenvalues lambda_1 <= lambda_2 <= ...; K = argmax_k (lambda_{k+1} - lambda_k), k no
smaller than the graph's number of connected components (``eigengap_k``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Self-tuning spectral clustering's neighbour index for sigma_i.
_SIGMA_NEIGHBOUR = 7
_GRAPH_KNN = 10
# Dense eigendecomposition up to this many points; scipy's Lanczos (eigsh) above.
_DENSE_EIG_MAX = 3000


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


def _components(m: Any) -> int:
    """Number of connected components of graph m (scipy sparse)."""
    from scipy.sparse.csgraph import connected_components

    return int(connected_components(m, directed=False)[0])


def eigengap_k(x: torch.Tensor, k_min: int, k_max: int) -> tuple[int, dict[str, Any]]:
    """Largest gap lambda_{k+1} - lambda_k of the normalised Laplacian's spectrum of x (N, D), over
    k in [max(k_min, c), k_max] with c the kNN graph's number of connected components.

    Eigenvalue 0 has multiplicity c (von Luxburg 2007, Prop. 4), so the gaps for k < c are rounding
    noise and every clustering has at least c clusters; when c > k_max no k in range is admissible
    and the vote is k_max with info["raw_k"] = c (censored by the consensus)."""
    n = x.shape[0]
    m = _normalised_affinity(x)  # L = I - M has eigenvalues 1 - mu
    comps = _components(m)
    info: dict[str, Any] = {"graph_knn": min(_GRAPH_KNN, n - 1), "components": comps}
    if comps > k_max:
        info["raw_k"] = comps
        return k_max, info
    n_eig = min(k_max + 1, n - 1)
    mu, _ = _top_eigen(m, n_eig, vectors=False)
    lam = 1.0 - mu  # ascending Laplacian eigenvalues lambda_1..lambda_n_eig
    info["eigenvalues"] = [round(float(v), 6) for v in lam]
    gaps = {k: float(lam[k] - lam[k - 1]) for k in range(max(k_min, comps), min(k_max, n_eig - 1) + 1)}
    if not gaps:
        return max(k_min, min(comps, k_max)), info
    return max(gaps, key=lambda kk: (gaps[kk], -kk)), info
