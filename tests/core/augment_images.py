"""Images the augmentation tests draw, and their round trip through PIL."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=generator(seed))


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) float on the 0..255 grid -> PIL image."""
    arr = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def from_pil(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1)


def quantised_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return (random_images(b, c, h, w, seed) * 255).round() / 255
