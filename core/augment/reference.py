"""The ``reference`` recipe: the views of the authors' public RUC scripts, batched on the device.

Weak view: RandomResizedCrop(scale 0.2-1, aspect ratio 3/4-4/3) to the input size, then a
horizontal flip with p = 0.5 (the scripts' ``transform_train``).

Strong view: the same crop and flip, then RandAugmentMC(n, m) and a Cutout (the scripts'
``transform_strong``). RandAugmentMC picks ``n`` distinct ops of Table 4's pool per sample and
applies each with p = 0.5 at level v, an integer uniform in [1, m - 1]; with the scripts' m = 2,
v = 1 always, so every op has one fixed strength (FixMatch's level scale of 10):

- Brightness, Color, Contrast, Sharpness: factor 0.109 (0.1 x 0.99 + 0.01: strongly degraded);
- Rotate +-41 degrees; ShearX/Y +-0.27 (about the top-left corner, as PIL's transform);
  TranslateX/Y +-trunc(0.27 x side) px; sign uniform; black fill, nearest resampling (PIL defaults);
- Solarize above level 231; Posterize keeps 8 bits (the identity in that pool);
- AutoContrast, Equalize, Identity.

Cutout fills a square with grey 127/255, always, placed as the scripts' ``CutoutAbs`` does (its
centre uniform over the image, the box clamped at the top/left and clipped at the bottom/right).
Its side is half the image's shorter side: the scripts cut 16 px, which is half of CIFAR's 32 (at
STL-10's 96 px the scripts' 16 px would be a sixth). PIL draws the rectangle with both ends
included (17 px); we fill exactly half the side.
"""

from __future__ import annotations

import math

import torch

from core.augment import ops
from core.augment._checks import check_images
from core.augment._random import rand, randint
from core.augment.randaugment import OP_NAMES, SKIP, apply_ops, op_index
from core.errors import CoreInputError

CROP_SCALE = (0.2, 1.0)  # fraction of the image area, both views
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's default aspect ratios
_CROP_ATTEMPTS = 10  # torchvision's rejection-sampling attempts before the centre-crop fallback
CUTOUT_FILL = 127.0 / 255.0
APPLY_P = 0.5
_LEVEL_SCALE = 10.0  # FixMatch's PARAMETER_MAX
_M_RANGE = (2, 10)

# RandAugmentMC's pool: (max_v, bias, integer parameter, random sign); None: no parameter.
_POOL: dict[str, tuple[float, float, bool, bool] | None] = {
    "AutoContrast": None,
    "Equalize": None,
    "Identity": None,
    "Brightness": (0.99, 0.01, False, False),
    "Color": (0.99, 0.01, False, False),
    "Contrast": (0.99, 0.01, False, False),
    "Posterize": (1.0, 8.0, True, False),
    "Rotate": (45.0, -45.0, True, True),
    "Sharpness": (0.99, 0.01, False, False),
    "ShearX": (0.3, -0.3, False, True),
    "ShearY": (0.3, -0.3, False, True),
    "Solarize": (256.0, 0.0, True, False),
    "TranslateX": (0.3, -0.3, False, True),
    "TranslateY": (0.3, -0.3, False, True),
}


def crop_boxes(
    b: int, h: int, w: int, *, device: torch.device, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandomResizedCrop boxes for ``b`` samples of an (h, w) image, vectorised.

    Returns top, left, height, width: (B,) int64 pixels. Each sample takes the first of its
    ``_CROP_ATTEMPTS`` draws (area uniform in CROP_SCALE, log aspect uniform in CROP_RATIO)
    that fits in the image, else the centre crop of the clamped aspect ratio.
    """
    area_u = rand((b, _CROP_ATTEMPTS), device=device, generator=generator)
    ratio_u = rand((b, _CROP_ATTEMPTS), device=device, generator=generator)
    offset_u = rand((b, 2), device=device, generator=generator)
    area = h * w * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * area_u)
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = torch.exp(lo + (hi - lo) * ratio_u)
    cw = torch.round(torch.sqrt(area * aspect)).to(torch.int64)  # (B, attempts)
    ch = torch.round(torch.sqrt(area / aspect)).to(torch.int64)
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.to(torch.int64).argmax(dim=1, keepdim=True)  # the first fitting attempt
    found = fits.any(dim=1)
    if w / h < CROP_RATIO[0]:
        fw, fh = w, round(w / CROP_RATIO[0])
    elif w / h > CROP_RATIO[1]:
        fw, fh = round(h * CROP_RATIO[1]), h
    else:
        fw, fh = w, h
    width = torch.where(found, cw.gather(1, first).squeeze(1), fw)
    height = torch.where(found, ch.gather(1, first).squeeze(1), fh)
    top = torch.floor(offset_u[:, 0] * (h - height + 1)).to(torch.int64).clamp(max=h - height)
    left = torch.floor(offset_u[:, 1] * (w - width + 1)).to(torch.int64).clamp(max=w - width)
    top = torch.where(found, top, (h - fh) // 2)
    left = torch.where(found, left, (w - fw) // 2)
    return top, left, height, width


def _crop_and_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    top, left, height, width = crop_boxes(b, h, w, device=x.device, generator=generator)
    flip = rand((b,), device=x.device, generator=generator) < 0.5
    return ops.resized_crop(x, top, left, height, width, flip)


def _pool_params(
    kinds: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """RandAugmentMC parameters (n, B) of ops ``kinds`` at integer ``level`` in native units."""
    out = torch.zeros_like(level, dtype=torch.float32)
    v = level.to(torch.float32)
    for name, entry in _POOL.items():
        if entry is None:
            continue
        max_v, bias, integer, signed = entry
        p = v * max_v / _LEVEL_SCALE
        p = (torch.trunc(p) if integer else p) + bias
        if signed:
            p = p * sign
        if name == "Solarize":
            p = 256.0 - p  # the scripts solarize above 256 - parameter
        elif name in ("TranslateX", "TranslateY"):
            p = torch.trunc(p * (w if name == "TranslateX" else h))  # PIL reads in = out + p
        out = torch.where(kinds == op_index(name), p, out)
    return out


def _check_mc(n: int, m: int) -> None:
    if not 0 <= n <= len(OP_NAMES):
        raise CoreInputError("n", f"the reference recipe draws n distinct ops: need 0 <= n <= 14, got {n}")
    if not _M_RANGE[0] <= m <= _M_RANGE[1]:
        raise CoreInputError("m", f"the reference recipe's RandAugmentMC needs 2 <= m <= 10, got {m}")


def randaugment_mc(x: torch.Tensor, *, n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """RandAugmentMC(n, m) without its Cutout on float32 x (B, C, H, W) in [0, 1]."""
    _check_mc(n, m)
    b, _, h, w = x.shape
    dev = x.device
    keys = rand((b, len(OP_NAMES)), device=dev, generator=generator)
    kinds = keys.argsort(dim=1)[:, :n].T.contiguous()  # (n, B): n distinct ops per sample
    level = randint(m - 1, (n, b), device=dev, generator=generator) + 1
    applied = rand((n, b), device=dev, generator=generator) < APPLY_P
    sign = torch.where(rand((n, b), device=dev, generator=generator) < 0.5, -1.0, 1.0)
    params = _pool_params(kinds, level, sign, h, w)
    kinds = torch.where(applied, kinds, SKIP)
    return apply_ops(x, kinds, params, fill=0.0, mode="nearest", pivot="corner")


def cutout_half(x: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """Grey square of half the shorter side per sample, placed as the scripts' ``CutoutAbs``."""
    b, _, h, w = x.shape
    size = min(h, w) // 2
    centre = rand((b, 2), device=x.device, generator=generator)  # (y, x) as fractions
    top = torch.floor((centre[:, 0] * h - size / 2.0).clamp(min=0.0)).to(torch.int64)
    left = torch.floor((centre[:, 1] * w - size / 2.0).clamp(min=0.0)).to(torch.int64)
    return ops.cutout(x, top, left, size, fill=CUTOUT_FILL)


def reference_weak(x: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """RandomResizedCrop(0.2-1) + horizontal flip. x: (B, C, H, W) float in [0, 1]; same shape out."""
    check_images(x)
    return _crop_and_flip(x.float(), generator).to(x.dtype)


def reference_strong(x: torch.Tensor, *, n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """Crop + flip + RandAugmentMC(n, m) + Cutout. x: (B, C, H, W) float in [0, 1]; same shape out."""
    check_images(x)
    _check_mc(n, m)
    out = _crop_and_flip(x.float(), generator)
    out = randaugment_mc(out, n=n, m=m, generator=generator)
    return cutout_half(out, generator=generator).clamp(0.0, 1.0).to(x.dtype)
