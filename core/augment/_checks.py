"""Input checks shared by the augmentations."""

from __future__ import annotations

import torch

from core.errors import CoreInputError


def check_images(x: torch.Tensor) -> None:
    """Raise ``CoreInputError`` unless ``x`` is a float (B, C, H, W) tensor with C in {1, 3}."""
    if x.ndim != 4:
        raise CoreInputError("images", f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise CoreInputError("images", f"expected a float tensor in [0, 1], got dtype {x.dtype}")
    if x.shape[1] not in (1, 3):
        raise CoreInputError("images", f"expected 1 or 3 channels, got {x.shape[1]}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise CoreInputError("images", f"images must be at least 2x2 pixels, got {x.shape[2]}x{x.shape[3]}")
