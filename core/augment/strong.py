"""Strong augmentation: batched RandAugment with the ops and parameter ranges of RUC Table 4.

Each sample draws its own ``n`` ops (uniformly, with replacement) and, for every op, its own
parameter. The ops are applied slot by slot; within a slot each op runs once on the subset of
samples that drew it (index_select / index_copy), and all geometric ops of a slot share one
``affine_grid`` + ``grid_sample``. The Python loops run over slots and op kinds, never samples.

Magnitude ``m``: the paper sets n = m = 2 and lists the parameter ranges that setting samples
from (Table 4). We sample each parameter uniformly from its range shrunk towards the op's
identity value by ``min(m, 2) / 2``: m = 2 is exactly Table 4, m = 1 half as far from identity,
m = 0 makes every op the identity. Enhance factors map Table 4's v in [0.01, 0.99] to
0.1 + 1.9 v as FixMatch's RandAugment does (v ~= 0.47 is the identity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.augment import ops
from core.augment._checks import check_images
from core.augment._random import rand, randint
from core.errors import CoreInputError

# The level of m at which the ranges are those of Table 4 (the paper's m = 2).
_M_TABLE4 = 2.0


@dataclass(frozen=True)
class _Op:
    name: str
    low: float  # Table 4 range
    high: float
    identity: float  # parameter value that leaves the image unchanged


# Order is part of the seeded behaviour: do not reorder.
OPS: tuple[_Op, ...] = (
    _Op("AutoContrast", 0.0, 0.0, 0.0),
    _Op("Equalize", 0.0, 0.0, 0.0),
    _Op("Identity", 0.0, 0.0, 0.0),
    _Op("Brightness", 0.01, 0.99, 0.9 / 1.9),
    _Op("Color", 0.01, 0.99, 0.9 / 1.9),
    _Op("Contrast", 0.01, 0.99, 0.9 / 1.9),
    _Op("Posterize", 1.0, 8.0, 8.0),
    _Op("Rotate", -45.0, 45.0, 0.0),
    _Op("Sharpness", 0.01, 0.99, 0.9 / 1.9),
    _Op("ShearX", -0.3, 0.3, 0.0),
    _Op("ShearY", -0.3, 0.3, 0.0),
    _Op("Solarize", 0.0, 256.0, 256.0),
    _Op("TranslateX", -0.3, 0.3, 0.0),
    _Op("TranslateY", -0.3, 0.3, 0.0),
)
OP_NAMES: tuple[str, ...] = tuple(o.name for o in OPS)
_GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


def _enhance_factor(v: torch.Tensor) -> torch.Tensor:
    return 0.1 + 1.9 * v


_PHOTOMETRIC: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": lambda x, p: ops.autocontrast(x),
    "Equalize": lambda x, p: ops.equalize(x),
    "Brightness": lambda x, p: ops.brightness(x, _enhance_factor(p)),
    "Color": lambda x, p: ops.color(x, _enhance_factor(p)),
    "Contrast": lambda x, p: ops.contrast(x, _enhance_factor(p)),
    "Posterize": lambda x, p: ops.posterize(x, p.round().to(torch.int64)),
    "Sharpness": lambda x, p: ops.sharpness(x, _enhance_factor(p)),
    "Solarize": lambda x, p: ops.solarize(x, p),
}


def _geometry(kind: torch.Tensor, param: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample inverse maps for geometric op indices ``kind`` (S,) -> (S, 2, 2), (S, 2)."""
    s = kind.shape[0]
    matrix = torch.eye(2, device=param.device).expand(s, 2, 2).clone()
    shift = torch.zeros(s, 2, device=param.device)
    for name, build in (
        ("Rotate", ops.rotate_matrix),
        ("ShearX", ops.shear_x_matrix),
        ("ShearY", ops.shear_y_matrix),
    ):
        sel = kind == OP_NAMES.index(name)
        matrix = torch.where(sel[:, None, None], build(param), matrix)
    # Reading from (x - lambda*W) moves the content by +lambda*W pixels (right / down).
    tx = kind == OP_NAMES.index("TranslateX")
    ty = kind == OP_NAMES.index("TranslateY")
    shift[:, 0] = torch.where(tx, -param * w, shift[:, 0])
    shift[:, 1] = torch.where(ty, -param * h, shift[:, 1])
    return matrix, shift


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
    kinds = randint(len(OPS), (n, b), device=dev, generator=generator)  # (n, B)
    u = rand((n, b), device=dev, generator=generator)  # (n, B)
    scale = min(float(m), _M_TABLE4) / _M_TABLE4
    low = torch.tensor([o.identity + scale * (o.low - o.identity) for o in OPS], device=dev)
    high = torch.tensor([o.identity + scale * (o.high - o.identity) for o in OPS], device=dev)
    params = low[kinds] + u * (high[kinds] - low[kinds])  # (n, B)

    out = x.float()  # work in float32 (bf16 levels are too coarse for Posterize/Equalize)
    geo_ids = torch.tensor([OP_NAMES.index(g) for g in sorted(_GEOMETRIC)], device=dev)
    for slot in range(n):
        kind, param = kinds[slot], params[slot]
        nxt = out.clone()
        for name, fn in _PHOTOMETRIC.items():
            idx = (kind == OP_NAMES.index(name)).nonzero().squeeze(1)
            if idx.numel():
                nxt.index_copy_(0, idx, fn(out.index_select(0, idx), param.index_select(0, idx)))
        gidx = torch.isin(kind, geo_ids).nonzero().squeeze(1)
        if gidx.numel():
            matrix, shift = _geometry(kind.index_select(0, gidx), param.index_select(0, gidx), h, w)
            nxt.index_copy_(0, gidx, ops.affine(out.index_select(0, gidx), matrix, shift))
        out = nxt
    return out.clamp(0.0, 1.0).to(x.dtype)
