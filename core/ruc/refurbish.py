"""Co-refurbishing, Eq. (18)-(19): unclean samples the networks are sure about become clean."""

from __future__ import annotations

import torch


def refurbish_candidates(probs: torch.Tensor, tau2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick, per sample, the more confident network's prediction and keep it where it exceeds tau2.

    probs: (V, N, K) softmax of V networks (V = 2 with co-training, 1 without) on N unclean samples.
    Returns (accept (N,) bool: max prob of the more confident network > tau2,
             labels (N,) int64: that network's argmax).
    """
    conf, pred = probs.max(dim=2)  # (V, N), (V, N)
    best = conf.argmax(dim=0, keepdim=True)  # (1, N)
    best_conf = conf.gather(0, best)[0]
    labels = pred.gather(0, best)[0]
    return best_conf > tau2, labels


def apply_refurbish(
    clean_mask: torch.Tensor,
    pseudo_labels: torch.Tensor,
    indices: torch.Tensor,
    accept: torch.Tensor,
    labels: torch.Tensor,
) -> int:
    """X <- X u {(u, 1_p)}: mark ``indices[accept]`` clean with ``labels[accept]``, in place.

    clean_mask: (N,) bool; pseudo_labels: (N,) int64; indices: (M,) int64 into N (unclean samples);
    accept: (M,) bool; labels: (M,) int64. Already-clean indices are left alone. Returns the number
    of samples that became clean.
    """
    idx = indices[accept]
    lab = labels[accept]
    fresh = ~clean_mask[idx]
    idx, lab = idx[fresh], lab[fresh]
    clean_mask[idx] = True
    pseudo_labels[idx] = lab.to(pseudo_labels.dtype)
    return int(idx.numel())
