"""The ``paper`` strong view: batched RandAugment with the ops and parameter ranges of RUC Table 4.

Each sample draws its own ``n`` ops (uniformly, with replacement, as RandAugment does) and, for
every op, its own parameter; every drawn op is applied.

Magnitude ``m``: the paper sets n = m = 2 and lists the parameter ranges that setting samples
from (Table 4). We sample each parameter uniformly from its range shrunk towards the op's
identity value by ``min(m, 2) / 2``: m = 2 is exactly Table 4, m = 1 half as far from identity,
m = 0 makes every op the identity. Enhance factors map Table 4's v in [0.01, 0.99] to
0.1 + 1.9 v as FixMatch's RandAugment does (v ~= 0.47 is the identity). Geometric ops fill grey
and resample bilinearly about the image centre.
"""

from __future__ import annotations

import torch

from core.augment._checks import check_images
from core.augment._random import rand, randint
from core.augment.randaugment import OP_NAMES, apply_ops, op_index
from core.errors import CoreInputError

# The level of m at which the ranges are those of Table 4 (the paper's m = 2).
_M_TABLE4 = 2.0

# Table 4: (low, high, identity value) of each op's parameter, in OP_NAMES order.
_TABLE4: dict[str, tuple[float, float, float]] = {
    "AutoContrast": (0.0, 0.0, 0.0),
    "Equalize": (0.0, 0.0, 0.0),
    "Identity": (0.0, 0.0, 0.0),
    "Brightness": (0.01, 0.99, 0.9 / 1.9),
    "Color": (0.01, 0.99, 0.9 / 1.9),
    "Contrast": (0.01, 0.99, 0.9 / 1.9),
    "Posterize": (1.0, 8.0, 8.0),
    "Rotate": (-45.0, 45.0, 0.0),
    "Sharpness": (0.01, 0.99, 0.9 / 1.9),
    "ShearX": (-0.3, 0.3, 0.0),
    "ShearY": (-0.3, 0.3, 0.0),
    "Solarize": (0.0, 256.0, 256.0),
    "TranslateX": (-0.3, 0.3, 0.0),
    "TranslateY": (-0.3, 0.3, 0.0),
}
_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


def _native(kinds: torch.Tensor, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Table 4 values (n, B) -> the native units of ``core.augment.randaugment``."""
    enhance = torch.isin(kinds, torch.tensor([op_index(e) for e in _ENHANCE], device=kinds.device))
    out = torch.where(enhance, 0.1 + 1.9 * params, params)
    # Table 4's translate is a fraction of the side; content moves by +lambda * side (right / down).
    out = torch.where(kinds == op_index("TranslateX"), -params * w, out)
    return torch.where(kinds == op_index("TranslateY"), -params * h, out)


def strong_augment(
    x: torch.Tensor, *, n: int = 2, m: float = 2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """RandAugment(n, m) over Table 4's ops, every sample with its own ops and parameters.

    x: (B, C, H, W) float in [0, 1], C in {1, 3}. Returns a new tensor of the same shape, dtype
    and device, in [0, 1]. Deterministic given ``generator`` (or the global RNG when None).
    """
    check_images(x)
    if n < 0:
        raise CoreInputError("n", f"number of RandAugment ops must be >= 0, got {n}")
    if m < 0:
        raise CoreInputError("m", f"RandAugment magnitude must be >= 0, got {m}")
    b, _, h, w = x.shape
    dev = x.device
    # All draws up front, in a fixed order and amount, so the stream never depends on the data.
    kinds = randint(len(OP_NAMES), (n, b), device=dev, generator=generator)  # (n, B)
    u = rand((n, b), device=dev, generator=generator)  # (n, B)
    scale = min(float(m), _M_TABLE4) / _M_TABLE4
    ranges = [_TABLE4[o] for o in OP_NAMES]
    low = torch.tensor([ident + scale * (lo - ident) for lo, _, ident in ranges], device=dev)
    high = torch.tensor([ident + scale * (hi - ident) for _, hi, ident in ranges], device=dev)
    params = low[kinds] + u * (high[kinds] - low[kinds])  # (n, B)
    # float32 throughout: bf16 levels are too coarse for Posterize/Equalize.
    out = apply_ops(x.float(), kinds, _native(kinds, params, h, w), fill=0.5, mode="bilinear", pivot="centre")
    return out.clamp(0.0, 1.0).to(x.dtype)
