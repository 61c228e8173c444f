"""Batched image operations of both augmentation recipes, each on float (B, C, H, W) in [0, 1].

Every op takes per-sample parameters as a (B,) tensor, so one call transforms a whole subset of a
batch. Semantics follow PIL's ``ImageOps``/``ImageEnhance`` (which the RUC and FixMatch code use)
on the 0..255 scale where that matters (Posterize, Solarize, Equalize), without PIL.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, the weights of PIL's convert("L").
_LUMA = (0.299, 0.587, 0.114)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma; a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance``: degenerate + factor * (x - degenerate), clipped to [0, 1].

    factor: (B,); factor 1 returns x, 0 returns degenerate, > 1 extrapolates.
    """
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (degenerate + f * (x - degenerate)).clamp(0.0, 1.0)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black."""
    return blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image (saturation); identity for 1-channel images."""
    if x.shape[1] == 1:
        return x
    return blend(grayscale(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the per-sample mean luma (a flat grey image)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return blend(mean.expand_as(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH-filtered image (kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border kept)."""
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = x.new_ones(3, 3)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, k, groups=c)  # (B, C, H-2, W-2): PIL leaves the 1-px border unfiltered
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return blend(degenerate, x, factor)


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> 0..255 float levels (exact integers)."""
    return (x * 255.0).round().clamp(0.0, 255.0)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (B,) int in [1, 8] of each 8-bit level; the result is on the 0..255 grid."""
    step = torch.pow(2.0, 8 - bits.to(torch.float32)).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return torch.floor(_to_levels(x) / step) * step / 255.0


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert pixels whose 8-bit level is >= threshold (B,) on the 0..256 scale (256 inverts none)."""
    t = threshold.view(-1, 1, 1, 1).to(x.dtype)
    return torch.where(_to_levels(x) >= t, 1.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each sample's channel linearly so that its min maps to 0 and its max to 1.

    A constant channel is left unchanged (PIL does the same).
    """
    lo = x.amin(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    flat = span <= 0
    out = (x - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, x, out).clamp(0.0, 1.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per sample and channel, vectorised with scatter_add histograms.

    PIL's rule: with n = H*W and h the 256-bin histogram, step = (n - h[last non-empty level]) // 255;
    level v maps to (cumsum_exclusive(h)[v] + step // 2) // step, clipped to 255; step 0 is identity.
    """
    b, c, hgt, wid = x.shape
    levels = _to_levels(x).to(torch.int64).view(b * c, hgt * wid)  # (BC, HW)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))  # (BC, 256)
    top = levels.amax(dim=1, keepdim=True)  # (BC, 1) last non-empty level
    step = (hgt * wid - hist.gather(1, top)) // 255  # (BC, 1)
    cum = torch.cumsum(hist, dim=1) - hist  # exclusive cumsum, (BC, 256)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    lut = ((cum + safe // 2) // safe).clamp(max=255)  # (BC, 256)
    mapped = lut.gather(1, levels)  # (BC, HW)
    out = torch.where(step > 0, mapped, levels).to(x.dtype) / 255.0
    return out.view(b, c, hgt, wid)


def affine(
    x: torch.Tensor,
    matrix: torch.Tensor,
    translation: torch.Tensor,
    *,
    fill: float = 0.5,
    mode: Literal["bilinear", "nearest"] = "bilinear",
) -> torch.Tensor:
    """Warp each sample with its own affine map in centred pixel coordinates, one grid_sample.

    matrix: (B, 2, 2) and translation: (B, 2), both in pixels about the image centre, mapping an
    output pixel position (x, y) to the input position it reads: in = matrix @ out + translation.
    Pixels read from outside the image take ``fill`` (grey, as FixMatch's RandAugment; PIL's
    default, which the RUC code keeps, is black). ``mode`` is the resampling (PIL's default: nearest).
    """
    b, _, h, w = x.shape
    # Normalised coordinates scale x by 2/W and y by 2/H; conjugate the pixel map into them.
    s = x.new_tensor([w / 2.0, h / 2.0])  # pixel units per normalised unit, (2,)
    theta_lin = matrix.to(x.dtype) * s[None, None, :] / s[None, :, None]  # S^-1 A S
    theta_t = translation.to(x.dtype) / s[None, :]  # S^-1 t
    theta = torch.cat([theta_lin, theta_t[:, :, None]], dim=2)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    # Sampling x - fill with zero padding and adding fill back makes the outside equal to fill.
    out = F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return (out + fill).clamp(0.0, 1.0)


def rotate_matrix(degrees: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 2, 2) inverse-map matrices; positive angles turn the content counter-clockwise."""
    t = torch.deg2rad(degrees.to(torch.float32))
    cos, sin = torch.cos(t), torch.sin(t)
    # y grows downwards in images, so a counter-clockwise turn on screen reads from R(+t) in (x, y).
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def shear_x_matrix(r: torch.Tensor) -> torch.Tensor:
    """(B,) shear factors -> (B, 2, 2): input x = out x + r * out y (PIL's ShearX)."""
    one, zero = torch.ones_like(r), torch.zeros_like(r)
    return torch.stack([torch.stack([one, r], -1), torch.stack([zero, one], -1)], -2).to(torch.float32)


def shear_y_matrix(r: torch.Tensor) -> torch.Tensor:
    """(B,) shear factors -> (B, 2, 2): input y = out y + r * out x (PIL's ShearY)."""
    one, zero = torch.ones_like(r), torch.zeros_like(r)
    return torch.stack([torch.stack([one, zero], -1), torch.stack([r, one], -1)], -2).to(torch.float32)


def _crop_coords(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised sample positions (B, size) of ``size`` output pixels spread over [start, start+length).

    Positions are those of ``interpolate(align_corners=False)`` of the crop, clamped to the
    crop's first and last pixel centres as it clamps to the crop's border.
    """
    k = torch.arange(size, device=start.device, dtype=torch.float32)[None, :]
    s, n = start.to(torch.float32)[:, None], length.to(torch.float32)[:, None]
    src = s + (k + 0.5) * n / size - 0.5  # pixel-centre index into the image
    src = torch.minimum(torch.maximum(src, s), s + n - 1)
    return (src + 0.5) * 2.0 / size - 1.0


def resized_crop(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    flip: torch.Tensor,
) -> torch.Tensor:
    """Crop each sample's box and resize it (bilinear) to the input size, mirrored where ``flip``.

    top, left, height, width: (B,) int pixel boxes inside the image; flip: (B,) bool. Matches
    torchvision's ``resized_crop`` (+ ``hflip``) per sample, in one ``grid_sample`` for the batch.
    """
    b, _, h, w = x.shape
    gx = _crop_coords(left, width, w)  # (B, W)
    gx = torch.where(flip[:, None], gx.flip(1), gx)
    gy = _crop_coords(top, height, h)  # (B, H)
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp(0.0, 1.0)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, *, fill: float) -> torch.Tensor:
    """Set the square ``[top, top+size) x [left, left+size)`` of each sample (clipped) to ``fill``.

    top, left: (B,) int pixel offsets; size in pixels. All channels get the same value.
    """
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :]  # (1, H)
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    box = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return torch.where(box, torch.full_like(x, fill), x)
