"""White-box L-inf attacks: FGSM and BIM (RUC Sec. 4.4), in [0, 1] pixel space or in feature space.

In pixel space the radius eps is in pixel units and every result is clipped to [0, 1]. A feature
job has no such box: ``scale`` turns the relative eps into an absolute radius (eps x the features'
mean per-dimension std) and ``clip`` is off, so only the eps-ball bounds the perturbation.

Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter ``.grad``
is touched. A module is put in eval mode for the attack (BatchNorm statistics must not move) and
its previous mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreInputError

ModelFn = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def _eval_mode(model: ModelFn) -> Iterator[None]:
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check(x01: torch.Tensor, target: torch.Tensor, eps: float) -> None:
    if not x01.is_floating_point():
        raise CoreInputError("images", f"expected a float tensor in [0, 1], got {x01.dtype}")
    if target.ndim != 1 or target.shape[0] != x01.shape[0]:
        raise CoreInputError("target", f"expected shape ({x01.shape[0]},), got {tuple(target.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise CoreInputError("eps", f"must be in [0, 1] (pixel scale), got {eps}")


def _loss_grad_sign(model: ModelFn, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sign(d CE(model(x), target) / dx), (B, ...) like x."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr).float()  # (B, K)
        # Sum, not mean: the sign is the same and small per-sample gradients do not underflow.
        loss = F.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xr)
    return grad.sign()


def fgsm(
    model: ModelFn,
    x01: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    *,
    scale: float = 1.0,
    clip: bool = True,
) -> torch.Tensor:
    """Fast gradient sign method: clip01(x + eps * scale * sign(grad_x CE(model(x), target))).

    x01: (B, C, H, W) float in [0, 1], or (B, D) features with ``clip`` off; target: (B,) int64
    class (cluster) indices. Returns the detached adversarial batch, same shape/dtype/device.
    """
    _check(x01, target, eps)
    with _eval_mode(model):
        step = _loss_grad_sign(model, x01, target)
    adv = x01.detach() + (eps * scale) * step
    return adv.clamp(0.0, 1.0) if clip else adv


def bim(
    model: ModelFn,
    x01: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    *,
    steps: int = 5,
    scale: float = 1.0,
    clip: bool = True,
) -> torch.Tensor:
    """Basic iterative method: ``steps`` FGSM steps of size eps*scale/steps, each projected back to
    the L-inf ball of radius eps*scale around x01 and (``clip``) to [0, 1].

    x01: (B, C, H, W) float in [0, 1], or (B, D) features with ``clip`` off; target: (B,) int64.
    Returns the detached adversarial batch.
    """
    _check(x01, target, eps)
    if steps < 1:
        raise CoreInputError("steps", f"must be >= 1, got {steps}")
    x0 = x01.detach()
    radius = eps * scale
    lo, hi = x0 - radius, x0 + radius
    if clip:
        lo, hi = lo.clamp(min=0.0), hi.clamp(max=1.0)
    alpha = radius / steps
    adv = x0.clone()
    with _eval_mode(model):
        for _ in range(steps):
            adv = adv + alpha * _loss_grad_sign(model, adv, target)
            adv = torch.minimum(torch.maximum(adv, lo), hi)
    return adv
