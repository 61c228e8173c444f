"""The base clustering whose pseudo-labels RUC refines (``base.method`` of the job spec).

kmeans      k-means (k-means++, restarts) on the uploaded embedding model's features, or on a PCA
            of the raw pixels scaled to [0, 1]; then a *base network* is fitted to those labels.
labels      uploaded assignments (hard (N,) or soft (N, K)); the same base network is fitted to them.
checkpoint  an uploaded SCAN-layout clustering model is the base network as is.
scan, dec, idec, dcn, gcc, and
            a registered base method (core.clustering.methods) on the same features as kmeans;
            its pseudo-labels are the targets of the base network, its embedding the one the
            metric strategy searches.

With ``base.pretext`` and no uploaded embedding model, a SimCLR model is trained on the images
first (core.clustering.pretext) and used exactly as an uploaded one would be; ``info["pretext"]``
holds its losses, and the sources below read "pretext" instead of "embedding_checkpoint".

With ``base.auto_k`` (kmeans and the registered methods) K is estimated first on those features
(core.clustering.autok); the chosen K and every estimator's vote land in ``info["auto_k"]``.

The base network (backbone + linear head, ``ClusteringModel``) is trained with plain cross-entropy
on the pseudo-labels under weak augmentation. Like the deep clustering models RUC is meant to fix,
it ends up overconfident: its softmax on the unaugmented images gives ``probs`` (used by the
confidence strategy and for the base model's ECE) and its argmax the pseudo-labels RUC refines.

The embedding for the metric strategy is the registered method's embedding; for the others the
uploaded embedding model's output when there is one, otherwise the PCA features (kmeans, labels) or
the clustering model's backbone features (checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from core.augment import weak_augment
from core.clustering.autok import estimate_k
from core.clustering.base_networks import (
    JobNormalisation,
    load_clustering_checkpoint,
    load_embedding_checkpoint,
    new_base_model,
)
from core.clustering.kmeans import kmeans
from core.clustering.methods import METHODS, MethodInputs, run_method
from core.clustering.pretext import train_simclr
from core.errors import CoreInputError
from core.hooks import RunHooks
from core.models import ClusteringModel
from core.models.inference import predict_softmax
from core.spec import JobSpec

if TYPE_CHECKING:
    from core.datasets import ImageDataset

__all__ = [
    "BaseOutput",
    "FIT_BATCH_SIZE",
    "FIT_LR",
    "INFER_BATCH_SIZE",
    "embed_images",
    "fit_base_network",
    "pca_features",
    "predict_probs",
    "run_base",
]

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
# PCA: exact eigendecomposition of the covariance up to this many pixel features, randomised above
# (a (D, D) float64 covariance at D = 4096 is 128 MiB).
EXACT_PCA_MAX_DIM = 4096
# Progress of the base_clustering stage (fractions): features up to 0.05, then the K estimate, the
# clustering itself, and fitting the base network. A registered method trains for many epochs, so it
# gets the larger share; k-means is quick next to fitting.
_P_PRETEXT = 0.5  # with base.pretext: its share of the stage; everything else is scaled into the rest
_P_FEATURES = 0.05
_P_AUTO_K = 0.1
_P_CLUSTER_KMEANS = 0.2
_P_CLUSTER_METHOD = 0.6


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


# ----------------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------------


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


def pca_features(images01: torch.Tensor, dim: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """PCA of flattened pixels: images01 (N, C, H, W) in [0, 1] -> (N, d) projections, d = min(dim, D, N).

    Exact (covariance eigendecomposition in float64, deterministic) for D <= EXACT_PCA_MAX_DIM,
    otherwise ``torch.pca_lowrank`` (randomised; seeded by the caller's global RNG).
    Returns the features and facts (dim, explained variance ratio, method).
    """
    n = images01.shape[0]
    x = images01.reshape(n, -1).float()
    d_in = x.shape[1]
    d = max(1, min(dim, d_in, n))
    mean = x.mean(0, keepdim=True)
    if d_in <= EXACT_PCA_MAX_DIM:
        cov = torch.zeros(d_in, d_in, dtype=torch.float64, device=x.device)
        for s in range(0, n, 8192):
            xc = (x[s : s + 8192] - mean).double()
            cov += xc.T @ xc
        cov /= max(n - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(evals, descending=True)[:d]
        comps = evecs[:, order]
        # Fix each component's sign (largest |loading| positive) so features do not flip between runs.
        sign = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
        comps = (comps * torch.where(sign == 0, torch.ones_like(sign), sign)).float()
        total = float(evals.clamp_min(0).sum())
        explained = float(evals[order].clamp_min(0).sum()) / total if total > 0 else 1.0
        method = "exact"
    else:
        _, s_vals, v = torch.pca_lowrank(x, q=d, center=True, niter=4)
        comps = v[:, :d]
        total = float(((x - mean) ** 2).sum()) / max(n - 1, 1)
        explained = float((s_vals[:d] ** 2).sum()) / max(n - 1, 1) / total if total > 0 else 1.0
        method = "randomized"
    feats = torch.cat([(x[s : s + 8192] - mean) @ comps for s in range(0, n, 8192)])
    return feats, {"dim": d, "explained_variance": round(explained, 6), "method": method}


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
) -> list[float]:
    """Train ``model`` with plain cross-entropy on ``targets`` under weak augmentation (Adam).

    images01: (N, C, H, W) float in [0, 1] on the model's device. targets: (N,) int64 hard labels
    or (N, K) float probabilities (soft cross-entropy). Shuffling and augmentation draw from a
    generator seeded with ``seed``. Reports progress in ``progress`` (a sub-range of the stage)
    after every epoch and honours ``hooks.should_stop`` between epochs.
    Returns the mean training loss of every epoch.
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
            x = weak_augment(images01[idx], generator=gen)
            loss = F.cross_entropy(model(x), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        losses.append(total / max(count, 1))
        hooks.on_progress(lo + (hi - lo) * (epoch + 1) / epochs, None, None)
    model.eval()
    return losses


def _rescaled(hooks: RunHooks, lo: float, hi: float) -> RunHooks:
    """``hooks`` with progress fractions mapped into [lo, hi]; epoch numbers and rows pass through."""

    def progress(fraction: float, epoch: int | None, total: int | None) -> None:
        hooks.on_progress(lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0), epoch, total)

    return dataclasses.replace(hooks, on_progress=progress)


def _sub_hooks(
    hooks: RunHooks, lo: float, hi: float, *, on_epoch: Callable[[dict[str, Any]], None] | None
) -> RunHooks:
    """``hooks`` with progress mapped into [lo, hi] of the stage, without epoch numbers (they
    would read as RUC's epochs), and epoch rows sent to ``on_epoch`` (None drops them)."""
    scaled = _rescaled(hooks, lo, hi)

    def progress(fraction: float, _epoch: int | None, _total: int | None) -> None:
        scaled.on_progress(fraction, None, None)

    return dataclasses.replace(hooks, on_progress=progress, on_epoch=on_epoch or (lambda _row: None))


def _assignment_targets(dataset: ImageDataset, k: int, device: torch.device) -> torch.Tensor:
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


# ----------------------------------------------------------------------------------------------
# run_base
# ----------------------------------------------------------------------------------------------


def run_base(
    spec: JobSpec,
    dataset: ImageDataset,
    *,
    device: str | torch.device,
    checkpoint_paths: dict[str, Path] | None = None,
    hooks: RunHooks | None = None,
) -> BaseOutput:
    """Compute the base clustering for ``spec.base.method`` (see module docstring).

    dataset: ImageDataset with N uint8 (N, H, W, C) images. checkpoint_paths: checkpoint id -> file.
    Reports progress of the ``base_clustering`` stage through ``hooks.on_progress`` and raises
    StopRequested between epochs when ``hooks.should_stop()``. Seeds the global torch RNG with
    ``spec.seed`` (model initialisation), so the output depends only on the inputs and the device.
    Raises CoreInputError naming the spec or dataset field for unusable inputs.
    """
    hooks = hooks or RunHooks()
    checkpoint_paths = checkpoint_paths or {}
    dev = torch.device(device)
    method = spec.base.method
    if method not in ("kmeans", "labels", "checkpoint", *METHODS):
        raise CoreInputError(
            "base.method",
            f"unknown base method {method!r}; choose one of "
            f"{sorted(('kmeans', 'labels', 'checkpoint', *METHODS))}",
        )
    k = spec.num_clusters
    if k is None and spec.base.auto_k is None:
        raise CoreInputError("num_clusters", "is required unless base.auto_k is given")
    if k is not None and dataset.n < k:
        raise CoreInputError(
            "num_clusters", f"{k} clusters requested but the dataset has only {dataset.n} images"
        )
    torch.manual_seed(spec.seed)
    images01 = dataset.to_float(dev)  # (N, C, H, W)
    info: dict[str, Any] = {"method": method}

    norm = JobNormalisation(spec, dataset)
    loaded = load_embedding_checkpoint(spec, checkpoint_paths, dataset, norm)
    emb_model, emb_normalisation = None, None
    if loaded is not None:
        emb_model, info["embedding_checkpoint"] = loaded
        emb_normalisation = info["embedding_checkpoint"]["normalisation"]
    emb_source = "embedding_checkpoint"
    if emb_model is None and spec.base.pretext is not None:
        pretext_rows: list[dict[str, Any]] = []
        pretext_norm = norm.resolve()
        emb_model, _ = train_simclr(
            images01,
            spec.base.pretext,
            backbone=spec.base.backbone,
            seed=spec.seed,
            hooks=_sub_hooks(hooks, 0.0, _P_PRETEXT, on_epoch=pretext_rows.append),
            normalisation=(pretext_norm.mean, pretext_norm.std),
        )
        emb_normalisation = pretext_norm.as_dict()
        emb_source = "pretext"
        info["pretext"] = {
            "backbone": emb_model.backbone_name,
            "final_loss": pretext_rows[-1]["loss"] if pretext_rows else None,
            "per_epoch": pretext_rows,
        }
        # the rest of the stage reports its progress in what is left after the pretext training
        hooks = _rescaled(hooks, _P_PRETEXT, 1.0)
    emb_features: torch.Tensor | None = None
    if emb_model is not None:
        emb_model = emb_model.to(dev).eval()
        emb_features = embed_images(emb_model, images01)  # (N, features_dim), unit norm

    if method == "checkpoint":
        assert k is not None  # BaseSpec forbids auto_k with checkpoint
        hooks.on_progress(_P_FEATURES, None, None)
        model, info["checkpoint"] = load_clustering_checkpoint(
            spec, checkpoint_paths, dataset, norm, num_clusters=k
        )
        info["normalisation"] = info["checkpoint"]["normalisation"]
        model = model.to(dev).eval()
        probs = predict_probs(model, images01)
        if emb_features is not None:
            embedding, info["embedding_source"] = emb_features, emb_source
        else:
            embedding = embed_images(model.features, images01)
            info["embedding_source"] = "clustering_checkpoint_backbone"
        info["backbone"] = model.backbone_name
        info["num_clusters"] = k
        hooks.on_progress(1.0, None, None)
        return BaseOutput(model, probs.argmax(1), probs, embedding, info)

    # Every other method clusters fixed features: the embedding model's, else a PCA of the pixels.
    pca: torch.Tensor | None = None
    if emb_features is None:
        pca, pca_info = pca_features(images01, spec.base.pca_dim)
        info["pca"] = pca_info
    feats = emb_features if emb_features is not None else pca
    assert feats is not None
    feature_source = emb_source if emb_features is not None else "pca"
    hooks.on_progress(_P_FEATURES, None, None)

    if k is None:
        assert spec.base.auto_k is not None
        if dataset.n < 3:
            raise CoreInputError("base.auto_k", f"needs at least 3 images; the dataset has {dataset.n}")
        ak = estimate_k(
            feats,
            spec.base.auto_k,
            seed=spec.seed,
            hooks=_sub_hooks(hooks, _P_FEATURES, _P_AUTO_K, on_epoch=None),
        )
        k = ak.k
        info["auto_k"] = ak.as_dict()
        hooks.on_event("info", f"auto_k chose K={k} (votes {ak.votes})")
    info["num_clusters"] = k
    p_start = _P_AUTO_K if "auto_k" in info else _P_FEATURES

    method_embedding: torch.Tensor | None = None
    if method == "kmeans":
        info["feature_source"] = feature_source
        km = kmeans(feats, k, restarts=spec.base.kmeans_restarts, seed=spec.seed, device=dev)
        targets: torch.Tensor = km.labels
        info["kmeans"] = {
            "inertia": km.inertia,
            "restarts": spec.base.kmeans_restarts,
            "iterations": km.n_iter,
            "cluster_sizes": torch.bincount(km.labels, minlength=k).tolist(),
        }
        p_fit = _P_CLUSTER_KMEANS
    elif method == "labels":
        targets = _assignment_targets(dataset, k, dev)
        info["assignments"] = "probabilities" if targets.ndim == 2 else "hard"
        p_fit = _P_CLUSTER_KMEANS
    else:
        info["feature_source"] = feature_source
        # Base-stage epochs are kept in the result, away from hooks.on_epoch: the worker stores
        # those as per-epoch metric rows keyed by RUC's epoch.
        per_epoch: list[dict[str, Any]] = []
        res = run_method(
            method,
            MethodInputs(images01, feats, emb_model, feature_source, normalisation=norm.resolve()),
            spec.base,
            num_clusters=k,
            seed=spec.seed,
            hooks=_sub_hooks(hooks, p_start, _P_CLUSTER_METHOD, on_epoch=per_epoch.append),
        )
        targets = res.pseudo_labels
        method_embedding = res.embedding.float()
        info[method] = {
            **res.info,
            "cluster_sizes": torch.bincount(res.pseudo_labels, minlength=k).tolist(),
            "per_epoch": per_epoch,
        }
        p_fit = _P_CLUSTER_METHOD
    hooks.on_progress(p_fit, None, None)

    model, report = new_base_model(spec, k, emb_model, dataset, norm, emb_normalisation)
    bb_source = emb_source if emb_model is not None else "new"
    info["normalisation"] = report["normalisation"]
    model = model.to(dev)
    losses = fit_base_network(
        model,
        images01,
        targets,
        epochs=spec.base.fit_epochs,
        seed=spec.seed,
        hooks=hooks,
        progress=(p_fit, 1.0),
    )
    probs = predict_probs(model, images01)
    pseudo = probs.argmax(1)
    hard_targets = targets if targets.ndim == 1 else targets.argmax(1)
    info.update(
        {
            "backbone": model.backbone_name,
            "backbone_source": bb_source,
            "fit_epochs": spec.base.fit_epochs,
            "fit_final_loss": losses[-1] if losses and math.isfinite(losses[-1]) else None,
            # how far the fitted network moved from the labels it was fitted to
            "agreement_with_targets": float((pseudo == hard_targets).float().mean()),
            "embedding_source": f"{method}_embedding" if method_embedding is not None else feature_source,
        }
    )
    embedding = method_embedding if method_embedding is not None else feats
    return BaseOutput(model, pseudo, probs, embedding, info)
