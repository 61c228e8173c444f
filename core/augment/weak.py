"""The ``paper`` weak view: random crop with reflect padding plus horizontal flip (RUC A.2, as SCAN/FixMatch).

Crop and flip are a single gather: every output pixel reads one input pixel whose index is the
crop offset plus the (possibly mirrored) column, reflected at the border. That replaces padding,
cropping and flipping with one indexed read for the whole batch.
"""

from __future__ import annotations

import torch

from core.augment._checks import check_images
from core.augment._random import rand, randint


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in ``[-size+1, 2*size-2]`` into ``[0, size)`` like ``F.pad(mode='reflect')``."""
    idx = torch.where(idx < 0, -idx, idx)
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def weak_augment(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (reflect padding of H/8 and W/8 px, at least 1) and horizontal flip with p=0.5.

    x: (B, C, H, W) float in [0, 1]. Returns a new (B, C, H, W) tensor of the same dtype and
    device; each sample gets its own offsets and flip. The content moves by at most the padding.
    """
    check_images(x)
    b, _, h, w = x.shape
    pad_h = max(1, h // 8)
    pad_w = max(1, w // 8)
    dev = x.device
    # Draw order is fixed (dy, dx, flip) so that a seed always means the same augmentation.
    dy = randint(2 * pad_h + 1, (b,), device=dev, generator=generator) - pad_h  # (B,)
    dx = randint(2 * pad_w + 1, (b,), device=dev, generator=generator) - pad_w  # (B,)
    flip = rand((b,), device=dev, generator=generator) < 0.5  # (B,)

    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], (w - 1 - ar_w)[None, :], ar_w[None, :])  # (B, W)
    rows = _reflect(ar_h[None, :] + dy[:, None], h)  # (B, H)
    cols = _reflect(cols + dx[:, None], w)  # (B, W)
    # Gather rows then columns; flat indices keep it one read per axis for the whole batch.
    out = torch.gather(x, 2, rows[:, None, :, None].expand(b, x.shape[1], h, w))
    return torch.gather(out, 3, cols[:, None, None, :].expand(b, x.shape[1], h, w))
