"""Views of precomputed feature vectors (a feature job's stand-in for image augmentation).

A fixed embedding cannot be cropped or recoloured; what perturbs it without leaving the data's
scale is feature dropout (an entry replaced by its dimension's dataset mean) and Gaussian noise
whose std is a multiple of each dimension's spread (core.spec.FeatureViewsSpec).
"""

from __future__ import annotations

import torch

from core.augment._random import rand, randn


def feature_view(
    x: torch.Tensor,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    dropout: float,
    noise: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One view of x (B, D): each entry -> its dimension's mean with probability ``dropout``, then
    + N(0, (noise * std_d)^2). mean, std: (D,) or (1, D) dataset statistics on x's device.

    Returns a new float tensor of x's shape; draws come from ``generator`` (global RNG if None).
    """
    out = x.float()
    mean, std = mean.reshape(1, -1), std.reshape(1, -1)
    if dropout > 0:
        drop = rand(tuple(x.shape), device=x.device, generator=generator) < dropout
        out = torch.where(drop, mean.expand_as(out), out)
    if noise > 0:
        out = out + (noise * std) * randn(tuple(x.shape), device=x.device, generator=generator)
    return out if out is not x else out.clone()
