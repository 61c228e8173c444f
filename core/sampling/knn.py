"""Cosine k-nearest neighbours in chunks: memory O(chunk_size * N), never an (N, N) matrix."""

from __future__ import annotations

import torch

__all__ = ["knn_indices"]


def knn_indices(emb: torch.Tensor, k: int, *, chunk_size: int = 4096) -> torch.Tensor:
    """Indices (N, k) int64 of each row's k most cosine-similar other rows, most similar first.

    emb: (N, D) float embedding (any scale; rows are L2-normalised here, zero rows stay zero).
    A row is never its own neighbour. Each chunk forms a (chunk_size, N) similarity block and
    keeps its top-k, so peak extra memory is about chunk_size * N floats. Runs on emb's device.
    """
    if emb.ndim != 2:
        raise ValueError(f"emb must be (N, D); got shape {tuple(emb.shape)}")
    n = emb.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N-1={n - 1}]; got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    e = torch.nn.functional.normalize(emb.float(), dim=1)
    out = torch.empty(n, k, dtype=torch.long, device=emb.device)
    # One similarity buffer reused by every chunk: allocating a fresh (chunk, N) block per chunk
    # costs page faults on the CPU that dominated the run time at N = 100,000.
    buf = torch.empty(min(chunk_size, n), n, dtype=e.dtype, device=emb.device)
    for s in range(0, n, chunk_size):
        rows_e = e[s : s + chunk_size]
        block = buf[: rows_e.shape[0]]
        torch.matmul(rows_e, e.T, out=block)  # (B, N) cosine similarities
        rows = torch.arange(block.shape[0], device=emb.device)
        block[rows, rows + s] = -float("inf")  # exclude self
        out[s : s + chunk_size] = block.topk(k, dim=1).indices
    return out
