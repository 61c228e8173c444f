"""Vision Transformer backbone: (B, C, H, W) -> (B, D), the class token after the final LayerNorm.

Our own definition of the pre-norm ViT that torchvision, timm and DINOv2 share (LayerNorm eps 1e-6,
exact GELU, biased projections), with DINOv2's optional LayerScale and register tokens. Parameter
names follow timm / DINOv2 (``patch_embed.proj``, ``cls_token``, ``register_tokens``, ``pos_embed``,
``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
``norm``); core.models.vit_layout maps the other layouts' names onto these.

Tokens are ordered class, registers, patches. The position embedding covers the patches and the
first ``pos_prefix`` prefix tokens: 1 (the class token: torchvision, timm, DINOv2, whose registers
get none), 0 (timm's ``no_embed_class``) or 1 + registers (timm with embedded registers).

It is learned for the checkpoint's patch grid. For another grid its patch part is resampled at each
forward (bicubic, align_corners False, antialiased, as timm does), the prefix tokens' embeddings
kept as they are; at the checkpoint's own grid it is used untouched. A side that is not a multiple
of the patch size is first resized (bilinear, antialiased) to the nearest multiple, so every pixel
reaches a whole patch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreInputError

LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class ViTConfig:
    """The architecture, as read from a checkpoint's tensors (core.models.vit_layout).

    grid: side of the checkpoint's square patch grid (its image size is ``grid * patch_size``).
    pos_prefix: how many prefix tokens (class, then registers) have a position embedding.
    """

    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    grid: int
    in_channels: int = 3
    registers: int = 0
    pos_prefix: int = 1
    layer_scale: bool = False
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise CoreInputError("checkpoint", f"{self.heads} heads do not divide the width {self.dim}")
        if self.pos_prefix not in (0, 1, 1 + self.registers):
            raise CoreInputError("checkpoint", f"position embedding over {self.pos_prefix} prefix tokens")

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ViTConfig:
        """The config among ``data``'s keys (others, such as a report's, are ignored)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in data:
                value = data[f.name]
                kind = bool if f.type in ("bool", bool) else int
                if type(value) is not kind:
                    raise CoreInputError(f"vit.{f.name}", f"expected {kind.__name__}, got {value!r}")
                values[f.name] = value
        try:
            return cls(**values)
        except TypeError as err:
            raise CoreInputError("vit", f"incomplete ViT config: {err}") from None


def input_plan(config: ViTConfig, height: int, width: int) -> dict[str, Any]:
    """What the ViT does with (height, width) images: the size they are resized to (the nearest
    multiple of the patch size), the patch grid, the token count, and whether the position
    embedding is the checkpoint's own or resampled."""
    size = (_to_multiple(height, config.patch_size), _to_multiple(width, config.patch_size))
    grid = (size[0] // config.patch_size, size[1] // config.patch_size)
    return {
        "input_size": list(size),
        "resized": size != (height, width),
        "grid": list(grid),
        "checkpoint_grid": [config.grid, config.grid],
        "pos_embed": "checkpoint" if grid == (config.grid, config.grid) else "interpolated",
        "tokens": 1 + config.registers + grid[0] * grid[1],
    }


def _to_multiple(side: int, patch: int) -> int:
    return max(patch, math.floor(side / patch + 0.5) * patch)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (DINOv2, CaiT)."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, laid out (q | k | v) x heads."""

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, T, D / heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm encoder block: x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x)))."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        d = config.dim
        self.norm1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.attn = Attention(d, config.heads, qkv_bias=config.qkv_bias)
        self.ls1: nn.Module = LayerScale(d) if config.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(d, config.mlp_dim)
        self.ls2: nn.Module = LayerScale(d) if config.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), H and W multiples of the patch size -> (B, D, H / p, W / p)."""
        return self.proj(x)


class VisionTransformer(nn.Module):
    """ViT feature extractor: (B, C, H, W) normalised -> (B, D) class token after the final norm."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.registers, d)) if config.registers else None
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_prefix + config.grid**2, d))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        # Only a start for training from scratch; checkpoints overwrite every parameter.
        for p in (self.cls_token, self.pos_embed, self.register_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, pos_prefix + grid_h * grid_w, D): the checkpoint's, resampled on the patch grid
        when (grid_h, grid_w) is not its own."""
        c = self.config
        if (grid_h, grid_w) == (c.grid, c.grid):
            return self.pos_embed
        prefix, patches = self.pos_embed[:, : c.pos_prefix], self.pos_embed[:, c.pos_prefix :]
        grid = patches.float().reshape(1, c.grid, c.grid, c.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=True)
        patches = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, c.dim).to(self.pos_embed.dtype)
        return torch.cat([prefix, patches], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised -> (B, T, D) every token after the final norm, T = 1 +
        registers + patches (the grid of ``input_plan``)."""
        c = self.config
        size = (_to_multiple(x.shape[-2], c.patch_size), _to_multiple(x.shape[-1], c.patch_size))
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        patches = self.patch_embed(x)  # (B, D, gh, gw)
        gh, gw = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # (B, gh * gw, D)
        b = patches.shape[0]
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(b, -1, -1))
        head = torch.cat(prefix, dim=1)  # (B, 1 + R, D)
        pos = self.position_embedding(gh, gw)
        p = c.pos_prefix
        tokens = torch.cat([head[:, :p] + pos[:, :p], head[:, p:], patches + pos[:, p:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised -> (B, D)."""
        return self.forward_tokens(x)[:, 0]


def parameter_count(config: ViTConfig) -> int:
    """Parameters of ``VisionTransformer(config)``, without building it."""
    d, m, p = config.dim, config.mlp_dim, config.patch_size
    stem = d * config.in_channels * p * p + d
    tokens = d * (1 + config.registers + config.pos_prefix + config.grid**2)
    block = 4 * d + (3 * d * d + (3 * d if config.qkv_bias else 0)) + d * d + d + 2 * d * m + m + d
    block += 2 * d if config.layer_scale else 0
    return stem + tokens + config.depth * block + 2 * d
