"""Fully connected autoencoder for DEC / IDEC / DCN (Xie et al. 2016: d-500-500-2000-10).

Works on any flat input: flattened small images (8x8..32x32, pixels in [0, 1]) or an uploaded
embedding model's feature vectors. ReLU between layers; the latent code and the reconstruction
are linear (as in DEC), so the latent space is not clipped at zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MlpAutoencoder", "mlp"]


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1] with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MlpAutoencoder(nn.Module):
    """encoder: (B, in_dim) -> (B, latent_dim); decoder: (B, latent_dim) -> (B, in_dim)."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        dims = [in_dim, *hidden_dims, latent_dim]
        self.in_dim = in_dim
        self.latent_dim = latent_dim
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, in_dim) -> (latent z (B, latent_dim), reconstruction (B, in_dim))."""
        z = self.encoder(x)
        return z, self.decoder(z)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """Latent codes (N, latent_dim) of x (N, in_dim), batch by batch, without gradients."""
        return torch.cat([self.encoder(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])
