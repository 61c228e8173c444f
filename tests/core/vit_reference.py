"""A DINOv2-layout Vision Transformer written for the tests, independent of core.models.vit: its
own attention (explicit softmax, no fused kernel), DINOv2's token order (the class token and patches
get position embeddings, registers are inserted after), its key names (``mask_token``,
``register_tokens``, ``ls1.gamma``), and optionally DINOv2's chunked ``blocks.<chunk>.<i>`` names.
Only what an uploaded DINOv2 checkpoint needs: inference, random weights."""

from __future__ import annotations

import torch
from torch import nn


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q @ k.transpose(-2, -1)) / hd**0.5, dim=-1)  # (B, heads, N, N)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)


class DinoV2Reference(nn.Module):
    """DINOv2's ViT: forward (B, C, img, img) normalised -> (B, D) class token after the final norm."""

    def __init__(
        self,
        *,
        img_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        registers: int = 0,
        channels: int = 3,
    ) -> None:
        super().__init__()
        grid = img_size // patch
        self.patch_embed = _PatchEmbed(patch, dim, channels)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-2)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, registers, dim) * 1e-2) if registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, 4 * dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def jitter(model: nn.Module, scale: float, seed: int = 0) -> nn.Module:
    """Add N(0, scale) noise to every parameter, so that LayerNorm affines, biases and LayerScale
    are not their trivial initial values and a wrongly mapped tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def chunked(sd: dict[str, torch.Tensor], per_chunk: int) -> dict[str, torch.Tensor]:
    """DINOv2's training form of the same weights: block i under ``blocks.<i // per_chunk>.<i>``."""
    out = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) // per_chunk}.{index}.{rest}"
        out[key] = value
    return out
