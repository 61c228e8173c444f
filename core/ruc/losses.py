"""The small pure steps of RUC's objective (Park et al., CVPR 2021, section 3.2).

Each function works on tiny tensors and is tested on its own; ``trainer.py`` composes them.
Probabilities are float (B, K) with rows summing to 1; labels are int64 (B,).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpen(p, T) = p^(1/T) / sum_k p_k^(1/T) (MixMatch; Eq. (12), (14)).

    p: (B, K) non-negative rows. Computed in log space so that small T cannot underflow a whole row.
    """
    logp = torch.log(p.clamp_min(1e-12)) / temperature
    return torch.softmax(logp, dim=1)


def smooth_labels(labels: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """Eq. (8): y~ = (1 - eps) y + eps / (C - 1) (1 - y) for one-hot y.

    labels: (B,) int64 in [0, C). Returns (B, C) float32; eps = 0 gives the one-hot labels.
    """
    onehot = F.one_hot(labels, num_classes).float()
    if num_classes < 2 or eps == 0:
        return onehot
    return (1.0 - eps) * onehot + (eps / (num_classes - 1)) * (1.0 - onehot)


def co_refine(
    onehot: torch.Tensor, partner_probs: torch.Tensor, w: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. (11)-(12): y_bar = Sharpen((1 - w) y + w p_partner, T).

    onehot, partner_probs: (B, K); w: (B,) in [0, 1], the partner's normalised confidence.
    """
    w = w.to(partner_probs.dtype)[:, None]
    return sharpen((1.0 - w) * onehot + w * partner_probs, temperature)


def guess_labels(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. (13)-(14): q_bar = Sharpen(mean over views and networks, T).

    probs: (V, B, K), one slice per (network, weak view). Returns (B, K).
    """
    return sharpen(probs.mean(dim=0), temperature)


def mixmatch_lambda(alpha: float, rng: np.random.Generator) -> float:
    """Eq. (1)-(2): lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda) in [0.5, 1]."""
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mix(
    inputs: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (3)-(4): x' = lam x + (1 - lam) x[perm], y' likewise.

    inputs: (B, C, H, W); targets: (B, K); perm: (B,) a permutation of range(B).
    """
    mixed_x = torch.lerp(inputs[perm], inputs, lam)
    mixed_y = torch.lerp(targets[perm], targets, lam)
    return mixed_x, mixed_y


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """H(targets, softmax(logits)) per sample. logits, targets: (B, K) -> (B,) float32."""
    return -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)


def probs_squared_error(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. (7)'s ||q - f(u)||^2 per sample, divided by K as in the MixMatch/DivideMix scripts.

    The authors' lambda_u values (25/50/100) are tuned to that per-element mean, so we keep it.
    logits, targets: (B, K) -> (B,) float32.
    """
    return (torch.softmax(logits.float(), dim=1) - targets).pow(2).mean(dim=1)


def minmax_normalise(values: torch.Tensor) -> torch.Tensor:
    """(v - min) / (max - min) over the whole tensor; all zeros when max == min (no information)."""
    lo, hi = values.min(), values.max()
    span = hi - lo
    if float(span) <= 1e-12:
        return torch.zeros_like(values)
    return (values - lo) / span


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing from base_lr at epoch 0 towards 0 at ``epochs`` (A.2), per epoch."""
    return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)))
