"""The RandAugment op pool (RUC Table 4) and its batched application, shared by both recipes.

A recipe draws, for each of ``n`` slots, an op index per sample (``SKIP`` where the slot does
nothing) and a parameter per sample in the op's native unit:

- Brightness, Color, Contrast, Sharpness: the PIL ``ImageEnhance`` factor (1 is the identity);
- Posterize: bits kept (rounded); Solarize: the 8-bit threshold on 0..256 (256 inverts none);
- Rotate: degrees, counter-clockwise; ShearX, ShearY: the shear factor;
- TranslateX, TranslateY: the inverse-map shift in pixels (in = out + shift);
- AutoContrast, Equalize, Identity: ignored.

Slots are applied in order; within a slot each photometric op runs once on the samples that drew
it (index_select / index_copy) and all geometric ops share one ``affine_grid`` + ``grid_sample``.
The Python loops run over slots and op kinds, never over samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from core.augment import ops

# Order is part of the seeded behaviour of both recipes: do not reorder.
OP_NAMES: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Identity",
    "Brightness",
    "Color",
    "Contrast",
    "Posterize",
    "Rotate",
    "Sharpness",
    "ShearX",
    "ShearY",
    "Solarize",
    "TranslateX",
    "TranslateY",
)
SKIP = -1  # op index of a slot that leaves the sample as it is
GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})

_PHOTOMETRIC: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": lambda x, p: ops.autocontrast(x),
    "Equalize": lambda x, p: ops.equalize(x),
    "Brightness": ops.brightness,
    "Color": ops.color,
    "Contrast": ops.contrast,
    "Posterize": lambda x, p: ops.posterize(x, p.round().to(torch.int64)),
    "Sharpness": ops.sharpness,
    "Solarize": ops.solarize,
}


def op_index(name: str) -> int:
    return OP_NAMES.index(name)


def _geometry(
    kind: torch.Tensor, param: torch.Tensor, h: int, w: int, pivot: Literal["centre", "corner"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample inverse maps for geometric op indices ``kind`` (S,) -> (S, 2, 2), (S, 2)."""
    s = kind.shape[0]
    matrix = torch.eye(2, device=param.device).expand(s, 2, 2).clone()
    shift = torch.zeros(s, 2, device=param.device)
    for name, build in (
        ("Rotate", ops.rotate_matrix),
        ("ShearX", ops.shear_x_matrix),
        ("ShearY", ops.shear_y_matrix),
    ):
        sel = kind == op_index(name)
        matrix = torch.where(sel[:, None, None], build(param), matrix)
    shift[:, 0] = torch.where(kind == op_index("TranslateX"), param, shift[:, 0])
    shift[:, 1] = torch.where(kind == op_index("TranslateY"), param, shift[:, 1])
    if pivot == "corner":
        # PIL's transform shears about the top-left corner: in = M (out + c) - c with c the centre.
        shift[:, 0] = torch.where(kind == op_index("ShearX"), param * (h / 2.0), shift[:, 0])
        shift[:, 1] = torch.where(kind == op_index("ShearY"), param * (w / 2.0), shift[:, 1])
    return matrix, shift


def apply_ops(
    x: torch.Tensor,
    kinds: torch.Tensor,
    params: torch.Tensor,
    *,
    fill: float,
    mode: Literal["bilinear", "nearest"],
    pivot: Literal["centre", "corner"],
) -> torch.Tensor:
    """Apply ``n`` slots of ops to float32 images x (B, C, H, W) in [0, 1].

    kinds: (n, B) int64 indices into ``OP_NAMES`` or ``SKIP``; params: (n, B) float32 in each
    op's native unit (module docstring). ``fill``, ``mode``: outside value and resampling of the
    geometric ops; ``pivot``: the point shears keep fixed. Returns a new (B, C, H, W) tensor.
    """
    _, _, h, w = x.shape
    geo_ids = torch.tensor([op_index(g) for g in sorted(GEOMETRIC)], device=x.device)
    out = x
    for slot in range(kinds.shape[0]):
        kind, param = kinds[slot], params[slot]
        nxt = out.clone()
        for name, fn in _PHOTOMETRIC.items():
            idx = (kind == op_index(name)).nonzero().squeeze(1)
            if idx.numel():
                nxt.index_copy_(0, idx, fn(out.index_select(0, idx), param.index_select(0, idx)))
        gidx = torch.isin(kind, geo_ids).nonzero().squeeze(1)
        if gidx.numel():
            matrix, shift = _geometry(kind.index_select(0, gidx), param.index_select(0, gidx), h, w, pivot)
            warped = ops.affine(out.index_select(0, gidx), matrix, shift, fill=fill, mode=mode)
            nxt.index_copy_(0, gidx, warped)
        out = nxt
    return out
