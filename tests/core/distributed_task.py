"""A small seeded RUC task shared by tests/core/test_distributed.py and bench/ruc_distributed.py.

8x8 colour-coded classes under heavy pixel noise with 25% wrong pseudo-labels: hard enough that
accuracy and ECE are not pinned at 1.0 and 0.0, small enough for seconds per epoch on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.metrics import cluster_accuracy, expected_calibration_error, hungarian_match
from core.models import ClusteringModel, build_backbone
from core.spec import RefineSpec

N, K = 240, 3


@dataclass
class Task:
    images: torch.Tensor  # (N, 8, 8, 3) uint8
    truth: torch.Tensor  # (N,) int64
    pseudo: torch.Tensor  # (N,) int64, 25% replaced at random
    clean: torch.Tensor  # (N,) bool
    base: ClusteringModel


def make_task() -> Task:
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, K, (N,), generator=g)
    colours = torch.tensor([[170.0, 90.0, 90.0], [90.0, 170.0, 90.0], [90.0, 90.0, 170.0]])
    imgs = colours[truth][:, None, None, :] + 90.0 * torch.randn(N, 8, 8, 3, generator=g)
    pseudo = truth.clone()
    noisy = torch.rand(N, generator=g) < 0.25
    pseudo[noisy] = torch.randint(0, K, (int(noisy.sum()),), generator=g)
    clean = (torch.rand(N, generator=g) < 0.6) & ~noisy
    torch.manual_seed(0)
    backbone, dim = build_backbone("small_cnn", in_channels=3)
    base = ClusteringModel(backbone, dim, K)
    return Task(imgs.clamp(0, 255).to(torch.uint8), truth, pseudo, clean, base)


def spec(epochs: int = 3) -> RefineSpec:
    return RefineSpec(epochs=epochs, batch_size=40, lambda_u_rampup_epochs=2)


def images01(task: Task) -> torch.Tensor:
    """(N, 3, 8, 8) float in [0, 1], what the base fit reads."""
    return task.images.permute(0, 3, 1, 2).float() / 255.0


def acc_ece(probs: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(Hungarian accuracy, ECE with 15 bins) of the (N, K) probabilities against the truth."""
    p = probs.numpy()
    pred, y = p.argmax(1), truth.numpy()
    correct = hungarian_match(y, pred, K)[pred] == y
    ece, _ = expected_calibration_error(p.max(1), correct)
    return cluster_accuracy(y, pred, K), ece
