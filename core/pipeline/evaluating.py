"""The evaluating stage: reports of the base and of every refinement run, robustness, collapse signs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.adversarial import robustness_report
from core.clustering.base import BaseOutput
from core.metrics import NO_LABELS, assignment_agreement, clean_set_quality, clustering_report, collapse_signs
from core.models import feature_statistics
from core.pipeline.context import JobContext
from core.pipeline.layout import EVAL_BATCH_SIZE
from core.ruc import RucOutput


class EnsembleLogits(nn.Module):
    """Logits of the refined ensemble for attacks: log of the mean softmax of the networks.

    log p_bar is a valid logit vector (softmax(log p_bar) = p_bar), so cross-entropy on it is the
    ensemble's negative log-likelihood and its gradient is the ensemble's."""

    def __init__(self, nets: tuple[nn.Module, ...]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(net(x).float(), dim=1) for net in self.nets]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


@dataclass
class Attacked:
    """The fixed random subset every model is attacked on (seeded by the job's seed).

    For a feature job x holds feature rows and ``feature_scale`` the mean per-dimension standard
    deviation of the whole space: the unit of the attack radii there (None for images)."""

    x: torch.Tensor  # (n, C, H, W) float in [0, 1] on the device; (n, D) features
    y: np.ndarray | None  # (n,) labels or None
    feature_scale: float | None = None


@dataclass
class RunEvaluation:
    """One refinement run's figures. probs: (N, K) float numpy, the ensemble's output."""

    seed: int
    probs: np.ndarray
    report: dict[str, Any]
    robustness: dict[str, Any]
    agreement: dict[str, Any]
    collapse: dict[str, Any]
    final_clean: dict[str, Any]


def clean_summary(mask: np.ndarray, pseudo: np.ndarray, y: np.ndarray | None, k: int) -> dict[str, Any]:
    """Size, fraction and per-cluster counts of a clean set; precision/recall/F1 when labels exist."""
    size = int(mask.sum())
    out: dict[str, Any] = {
        "size": size,
        "fraction": size / max(len(mask), 1),
        "per_cluster": [int(v) for v in np.bincount(pseudo[mask], minlength=k)],
    }
    if y is None:
        out.update(precision=None, recall=None, f1=None, unavailable_reason=NO_LABELS)
    else:
        out.update(clean_set_quality(mask, pseudo, y, k))
        out["unavailable_reason"] = None
    return out


def attack_subset(ctx: JobContext, y: np.ndarray | None) -> Attacked:
    """``evaluate.attack_max_samples`` images drawn with the job's seed: the same for every model."""
    n_att = min(ctx.spec.evaluate.attack_max_samples, ctx.dataset.n)
    gen = torch.Generator().manual_seed(ctx.spec.seed)
    subset = torch.randperm(ctx.dataset.n, generator=gen)[:n_att].sort().values
    labels = y[subset.numpy()] if y is not None else None
    if ctx.inputs is not None and ctx.inputs.kind == "features":
        assert ctx.inputs.space is not None
        features = ctx.dataset.features[ctx.inputs.space]
        scale = float(feature_statistics(features)[1].mean())
        return Attacked(x=features[subset].to(ctx.device), y=labels, feature_scale=scale)
    return Attacked(x=ctx.dataset.to_float(ctx.device, subset), y=labels)


def robustness(
    ctx: JobContext, model: nn.Module, report: dict[str, Any], attacked: Attacked
) -> dict[str, Any]:
    """``robustness_report`` of ``model`` on the attack subset, mapped to classes as ``report`` maps."""
    mapping = np.asarray(report["mapping"]) if report.get("mapping") is not None else None
    return robustness_report(
        model,
        attacked.x,
        y_true=attacked.y,
        mapping=mapping,
        attacks=list(ctx.spec.evaluate.attacks),
        batch_size=EVAL_BATCH_SIZE,
        device=ctx.device,
        feature_scale=attacked.feature_scale,
    )


def evaluate_base(ctx: JobContext, base: BaseOutput, y: np.ndarray | None, k: int) -> tuple[dict, np.ndarray]:
    """The base's clustering report and its probabilities (N, K) as numpy."""
    probs = base.probs.detach().float().cpu().numpy()
    return clustering_report(probs, y, num_clusters=k, ece_bins=ctx.spec.evaluate.ece_bins), probs


def evaluate_run(
    ctx: JobContext,
    ruc: RucOutput,
    seed: int,
    *,
    base_probs: np.ndarray,
    y: np.ndarray | None,
    k: int,
    attacked: Attacked,
) -> RunEvaluation:
    """Report, robustness, agreement with the base and collapse signs of one refinement run."""
    probs = ruc.probs.detach().float().cpu().numpy()
    report = clustering_report(probs, y, num_clusters=k, ece_bins=ctx.spec.evaluate.ece_bins)
    base_pred = base_probs.argmax(1)
    # eval() on the wrapper too: a new module is in training mode, and the attacks restore the mode
    # they found, which would leave the networks training (BatchNorm statistics moving on every
    # later forward, so the saved ensemble would no longer give the assignments it reported).
    ensemble = EnsembleLogits(tuple(m.eval() for m in ruc.models)).eval()
    return RunEvaluation(
        seed=seed,
        probs=probs,
        report=report,
        robustness=robustness(ctx, ensemble, report, attacked),
        agreement=assignment_agreement(base_pred, probs.argmax(1), k),
        collapse=collapse_signs(base_pred, probs, num_clusters=k),
        final_clean=clean_summary(ruc.clean_mask.cpu().numpy(), ruc.pseudo_labels.cpu().numpy(), y, k),
    )
