"""Random draws for batched augmentation that honour an optional ``torch.Generator``.

A generator may live on the CPU while the images live on a GPU (or vice versa): numbers are
drawn on the generator's device and then moved, so the same seed gives the same augmentation
wherever the images are. Without a generator the global RNG of the images' device is used,
which ``torch.manual_seed`` seeds.
"""

from __future__ import annotations

import torch


def rand(shape: tuple[int, ...], *, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``shape`` on ``device``."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randint(
    high: int, shape: tuple[int, ...], *, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` as int64 of ``shape`` on ``device``."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


def randn(shape: tuple[int, ...], *, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal float32 of ``shape`` on ``device``."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)
