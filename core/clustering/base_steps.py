"""The building blocks of the base stage shared by image and feature jobs: the output type, batched
inference, the base network's fit, the clustering that gives its targets (``base.method`` on fixed
features, auto-K first) and the progress fractions of the stage."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from core.augment import weak_augment
from core.clustering.autok import estimate_k
from core.clustering.kmeans import kmeans
from core.clustering.methods import MethodInputs, run_method
from core.distributed import reduce_step, share
from core.distributed.commands import collective
from core.errors import CoreInputError
from core.hooks import RunHooks
from core.models import ClusteringModel, feature_statistics
from core.models.inference import predict_softmax
from core.spec import JobSpec

if TYPE_CHECKING:
    from core.datasets import ImageDataset

# Base-network fitting: Adam at 1e-3 converges in tens of epochs for every backbone we build and,
# with plain CE and no regularisation, reaches the overconfidence the paper attributes to
# clustering models. 256 balances CPU speed on small data against GPU utilisation; small datasets
# use smaller batches so that an epoch still has FIT_MIN_STEPS optimiser steps.
FIT_BATCH_SIZE = 256
FIT_MIN_BATCH_SIZE = 16
FIT_MIN_STEPS = 8
FIT_LR = 1e-3
# Inference only: large batches, no gradients.
INFER_BATCH_SIZE = 1024
# Progress of the base_clustering stage (fractions): features up to 0.05, then the K estimate, the
# clustering itself, and fitting the base network. A registered method trains for many epochs, so it
# gets the larger share; k-means is quick next to fitting.
P_PRETEXT = 0.5  # with base.pretext: its share of the stage; everything else is scaled into the rest
P_FEATURES = 0.05
P_AUTO_K = 0.1
P_CLUSTER_KMEANS = 0.2
P_CLUSTER_METHOD = 0.6


@dataclass
class BaseOutput:
    """model: the base ClusteringModel (eval mode, on the job's device).
    pseudo_labels: (N,) int64 = probs.argmax(1). probs: (N, K) float32, rows sum to 1.
    embedding: (N, D) float32, for the metric strategy. info: JSON-serialisable facts."""

    model: ClusteringModel
    pseudo_labels: torch.Tensor
    probs: torch.Tensor
    embedding: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def embed_images(fn: Any, images01: torch.Tensor, *, batch_size: int = INFER_BATCH_SIZE) -> torch.Tensor:
    """Apply ``fn`` ((B, C, H, W) [0,1] -> (B, D)) batch by batch; returns (N, D) float32."""
    outs = [fn(images01[s : s + batch_size]).float() for s in range(0, images01.shape[0], batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def predict_probs(
    model: nn.Module, images01: torch.Tensor, *, batch_size: int = INFER_BATCH_SIZE
) -> torch.Tensor:
    """Softmax (N, K) float32 of ``model`` in eval mode on unaugmented images (N, C, H, W) in [0, 1]."""
    return predict_softmax(model, images01, batch_size=batch_size)


@collective("base.fit", local=("hooks",))
def fit_base_network(
    model: ClusteringModel,
    images01: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    hooks: RunHooks,
    progress: tuple[float, float] = (0.0, 1.0),
    batch_size: int = FIT_BATCH_SIZE,
    lr: float = FIT_LR,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``model`` with plain cross-entropy on ``targets`` under weak augmentation (Adam).

    images01: (N, C, H, W) float in [0, 1] on the model's device, or (N, D) features with
    ``augment`` their weak view (default: core.augment.weak_augment of images). targets: (N,)
    int64 hard labels or (N, K) float probabilities (soft cross-entropy). Shuffling and
    augmentation draw from a generator seeded with ``seed``. Reports progress in ``progress`` (a
    sub-range of the stage) after every epoch and honours ``hooks.should_stop`` between epochs.
    Returns the mean training loss of every epoch. On several ranks (core.distributed) each
    augments the whole batch with the shared generator, trains on its share of the rows and sums
    gradients before the step, so every rank ends with the same network.
    """
    n = images01.shape[0]
    dev = images01.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bs = max(2, min(batch_size, n, max(FIT_MIN_BATCH_SIZE, n // FIT_MIN_STEPS)))
    losses: list[float] = []
    lo, hi = progress
    model.train()
    for epoch in range(epochs):
        hooks.check_stop("base_clustering")
        perm = torch.randperm(n, generator=gen).to(dev)
        total, count = 0.0, 0
        # drop the ragged last batch unless it is the only one: BatchNorm needs > 1 sample.
        n_full = n // bs * bs if n >= 2 * bs else n
        for s in range(0, n_full, bs):
            idx = perm[s : s + bs]
            if idx.numel() < 2:
                break
            x = augment(images01[idx], gen) if augment else weak_augment(images01[idx], generator=gen)
            row_lo, row_hi, weight = share(idx.numel())
            if row_hi - row_lo == idx.numel() and weight == 1.0:
                loss = F.cross_entropy(model(x), targets[idx])
            else:  # this rank's share of the batch mean
                rows = slice(row_lo, row_hi)
                part = F.cross_entropy(model(x[rows]), targets[idx[rows]], reduction="sum")
                loss = part * weight / idx.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            batch_loss = reduce_step(model, loss.detach().reshape(1))  # summed over ranks (no-op on one)
            opt.step()
            total += float(batch_loss) * idx.numel()
            count += idx.numel()
        losses.append(total / max(count, 1))
        hooks.on_progress(lo + (hi - lo) * (epoch + 1) / epochs, None, None)
    model.eval()
    return losses


def rescaled_hooks(hooks: RunHooks, lo: float, hi: float) -> RunHooks:
    """``hooks`` with progress fractions mapped into [lo, hi]; epoch numbers and rows pass through."""

    def progress(fraction: float, epoch: int | None, total: int | None) -> None:
        hooks.on_progress(lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0), epoch, total)

    return dataclasses.replace(hooks, on_progress=progress)


def sub_hooks(
    hooks: RunHooks, lo: float, hi: float, *, on_epoch: Callable[[dict[str, Any]], None] | None
) -> RunHooks:
    """``hooks`` with progress mapped into [lo, hi] of the stage, without epoch numbers (they
    would read as RUC's epochs), and epoch rows sent to ``on_epoch`` (None drops them)."""
    scaled = rescaled_hooks(hooks, lo, hi)

    def progress(fraction: float, _epoch: int | None, _total: int | None) -> None:
        scaled.on_progress(fraction, None, None)

    return dataclasses.replace(hooks, on_progress=progress, on_epoch=on_epoch or (lambda _row: None))


def assignment_targets(dataset: ImageDataset, k: int, device: torch.device) -> torch.Tensor:
    """Validated uploaded assignments: (N,) int64 or (N, K) float32 rows summing to 1."""
    a = dataset.assignments
    if a is None:
        raise CoreInputError(
            "base.method",
            "'labels' needs uploaded assignments (npz key 'assignments' or 'assignment_probs'); "
            "the dataset has none",
        )
    if a.shape[0] != dataset.n:
        raise CoreInputError("assignments", f"has {a.shape[0]} rows but the dataset has {dataset.n} images")
    if a.ndim == 1:
        a = a.long()
        if int(a.min()) < 0:
            raise CoreInputError("assignments", f"contains a negative cluster index ({int(a.min())})")
        if int(a.max()) >= k:
            raise CoreInputError(
                "num_clusters", f"the uploaded assignments use cluster {int(a.max())} but num_clusters is {k}"
            )
        return a.to(device)
    if a.ndim != 2:
        raise CoreInputError("assignments", f"must be (N,) or (N, K); got shape {tuple(a.shape)}")
    if a.shape[1] != k:
        raise CoreInputError(
            "num_clusters",
            f"the uploaded assignment probabilities have {a.shape[1]} columns but num_clusters is {k}",
        )
    a = a.float()
    if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
        raise CoreInputError("assignments", "probabilities must be finite and non-negative")
    sums = a.sum(1, keepdim=True)
    if bool((sums <= 0).any()):
        raise CoreInputError("assignments", "a row of probabilities sums to 0")
    return (a / sums).to(device)


def feature_space_info(name: str, x: torch.Tensor) -> dict[str, Any]:
    """The feature space a job clusters in: its name, D and the mean per-dimension std (the unit of
    a feature job's attack radii)."""
    return {"name": name, "dim": int(x.shape[1]), "mean_std": float(feature_statistics(x)[1].mean())}


def cluster_targets(
    spec: JobSpec, dataset: ImageDataset, inputs: MethodInputs, info: dict[str, Any], hooks: RunHooks
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The targets the base network is fitted to, by ``base.method`` on ``inputs.features``
    (auto-K first when asked): (targets (N,) or (N, K), the method's embedding or None, the
    progress fraction reached). Writes num_clusters, auto_k and the method's block into ``info``."""
    feats, dev, method = inputs.features, inputs.device, spec.base.method
    k = spec.num_clusters
    if k is None:
        assert spec.base.auto_k is not None
        if dataset.n < 3:
            raise CoreInputError("base.auto_k", f"needs at least 3 samples; the dataset has {dataset.n}")
        ak = estimate_k(
            feats,
            spec.base.auto_k,
            seed=spec.seed,
            hooks=sub_hooks(hooks, P_FEATURES, P_AUTO_K, on_epoch=None),
        )
        k = ak.k
        info["auto_k"] = ak.as_dict()
        hooks.on_event("info", f"auto_k chose K={k} (votes {ak.votes})")
    info["num_clusters"] = k
    p_start = P_AUTO_K if "auto_k" in info else P_FEATURES

    if method == "labels":
        targets = assignment_targets(dataset, k, dev)
        info["assignments"] = "probabilities" if targets.ndim == 2 else "hard"
        return targets, None, P_CLUSTER_KMEANS
    info["feature_source"] = inputs.features_source
    if method == "kmeans":
        km = kmeans(feats, k, restarts=spec.base.kmeans_restarts, seed=spec.seed, device=dev)
        info["kmeans"] = {
            "inertia": km.inertia,
            "restarts": spec.base.kmeans_restarts,
            "iterations": km.n_iter,
            "cluster_sizes": torch.bincount(km.labels, minlength=k).tolist(),
        }
        return km.labels, None, P_CLUSTER_KMEANS
    # Base-stage epochs are kept in the result, away from hooks.on_epoch: the worker stores those
    # as per-epoch metric rows keyed by RUC's epoch.
    per_epoch: list[dict[str, Any]] = []
    res = run_method(
        method,
        inputs,
        spec.base,
        num_clusters=k,
        seed=spec.seed,
        hooks=sub_hooks(hooks, p_start, P_CLUSTER_METHOD, on_epoch=per_epoch.append),
    )
    info[method] = {
        **res.info,
        "cluster_sizes": torch.bincount(res.pseudo_labels, minlength=k).tolist(),
        "per_epoch": per_epoch,
    }
    return res.pseudo_labels, res.embedding.float(), P_CLUSTER_METHOD


def fit_base(
    model: ClusteringModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    spec: JobSpec,
    info: dict[str, Any],
    hooks: RunHooks,
    p_fit: float,
    method_embedding: torch.Tensor | None,
    feats: torch.Tensor,
    feature_source: str,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> BaseOutput:
    """Fit the base network ``model`` to ``targets`` on ``x`` (images, or features with their weak
    view ``augment``) and report it; the embedding is the method's, else ``feats`` (from
    ``feature_source``)."""
    losses = fit_base_network(
        model,
        x,
        targets,
        epochs=spec.base.fit_epochs,
        seed=spec.seed,
        hooks=hooks,
        progress=(p_fit, 1.0),
        augment=augment,
    )
    probs = predict_probs(model, x)
    pseudo = probs.argmax(1)
    hard_targets = targets if targets.ndim == 1 else targets.argmax(1)
    info.update(
        {
            "backbone": model.backbone_name,
            "fit_epochs": spec.base.fit_epochs,
            "fit_final_loss": losses[-1] if losses and math.isfinite(losses[-1]) else None,
            # how far the fitted network moved from the labels it was fitted to
            "agreement_with_targets": float((pseudo == hard_targets).float().mean()),
            "embedding_source": (
                f"{spec.base.method}_embedding" if method_embedding is not None else feature_source
            ),
        }
    )
    embedding = method_embedding if method_embedding is not None else feats
    return BaseOutput(model, pseudo, probs, embedding, info)
