"""Batched forwards without gradients: the one inference path of RUC, the base stage and evaluation.

Images arrive either as uint8 (N, H, W, C), the form a job keeps on its device, or as float
(N, C, H, W) in [0, 1]; they are converted chunk by chunk, so at most one chunk of them is ever
float at a time.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """torch.autocast on ``device`` with ``dtype``; a no-op context for None (plain float32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """x (B, C, H, W) in the networks' memory format."""
    return x.contiguous(memory_format=memory_format(channels_last))


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1]: every network input starts here (the
    networks normalise inside ``forward``; the ONNX export traces this same function)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def u8_to_float(images: torch.Tensor, idx: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, C) rows ``idx`` -> float32 (B, C, H, W) in [0, 1].

    The permuted view of NHWC data already has channels_last strides; ``contiguous`` makes
    it NCHW only when the networks want that layout.
    """
    return to_layout(unit_pixels(images.index_select(0, idx)), channels_last)


def _rows(images: torch.Tensor, idx: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return u8_to_float(images, idx, channels_last)
    return to_layout(images.index_select(0, idx).float(), channels_last)


def softmax_chunks(
    net: nn.Module, x: torch.Tensor, *, chunk: int, autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Softmax of ``net`` on float x (B, C, H, W) -> (B, K) float32, no graph, in chunks of ``chunk``.

    The caller sets the network's mode (eval for predictions that do not depend on batch-mates).
    """
    with torch.no_grad(), autocast(x.device, autocast_dtype):
        return torch.cat([torch.softmax(net(part).float(), dim=1) for part in x.split(chunk)])


def predict_softmax(
    net: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int,
    chunk: int | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Softmax (N, K) float32 of ``net`` in eval mode on every unaugmented image, on their device.

    images: uint8 (N, H, W, C) or float (N, C, H, W) in [0, 1], converted ``batch_size`` at a time
    and forwarded ``chunk`` (default: batch_size) at a time. The network's train/eval mode is
    restored afterwards.
    """
    was_training = net.training
    net.eval()
    try:
        idx = torch.arange(images.shape[0], device=images.device)
        parts = [
            softmax_chunks(
                net,
                _rows(images, part, channels_last),
                chunk=chunk or batch_size,
                autocast_dtype=autocast_dtype,
            )
            for part in idx.split(batch_size)
        ]
    finally:
        net.train(was_training)
    return torch.cat(parts)
