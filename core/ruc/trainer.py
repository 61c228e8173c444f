"""RUC retraining (Park et al., CVPR 2021, Algorithm 1) with the decisions of DESIGN.md: the epoch loop.

Per epoch, network 1 trains with network 2 as its partner, then the reverse (core/ruc/step.py
holds one pass: views, targets, losses); co-refurbishing follows at the epoch end (paper) or runs
inside the batch loop (the authors' script). Schedules are fractions of the run
(core/ruc/schedules.py) and their effective values are returned.

Choices worth knowing:

* Prediction tables. At the end of its pass each network predicts the whole dataset once
  (unaugmented, eval mode, no graph) into a (N, K) table. A network does not change while the
  other trains, so its table *is* its current f(x) for everything that needs one: the partner's
  f(x) and confidence w in co-refinement, co-refurbishing at the epoch end, the confidence
  figure and the final ensemble. Per step, only the M weak views of u are forwarded without
  gradients (own network and partner, for label guessing; refine.interleave shares them).
* Forwards without gradients run in eval mode: a sample's prediction then does not depend on
  its batch-mates, it is the same function the final ensemble and refurbishing use, and
  BatchNorm's running statistics only see the training views. (The authors' script keeps train
  mode there.)
* Without co-training the single network is its own partner: co-refinement uses its current
  prediction on x weighted by its confidence from its previous pass (zeros in the first epoch),
  label guessing uses its own views, refurbishing its own table.
* All randomness (batches, augmentations, permutations) comes from one CPU torch.Generator and
  the Beta draws from a numpy Generator, both seeded from ``seed`` and checkpointed, so a run
  resumed from a checkpoint reproduces an uninterrupted run exactly on the CPU.
* A non-finite loss stops the run with TrainingDiverged (epoch, step, value, the setting to lower).
* On several ranks (core.distributed) every rank runs this function with rank 0's inputs; rank 0
  alone checkpoints (the others get no path) and its resume decision is broadcast, and after every
  epoch the ranks check that their clean sets, labels, tables and networks agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.distributed import broadcast_tree, check_state
from core.distributed.commands import collective
from core.errors import CoreInputError
from core.hooks import RunHooks
from core.models import ClusteringModel, FeatureClusteringModel
from core.models.inference import predict_softmax
from core.ruc.epoch_metrics import label_metrics
from core.ruc.interleave import train_interleaved
from core.ruc.losses import cosine_lr
from core.ruc.networks import build_net, build_optimizers, set_lr
from core.ruc.perf import (
    INFERENCE_BATCH_FACTOR,
    PerfOptions,
    nograd_chunk_size,
    place_network,
    resolve_fold,
    resolve_perf,
)
from core.ruc.refurbish import apply_refurbish, refurbish_candidates
from core.ruc.runtime import Runtime, try_resume
from core.ruc.schedules import Schedule, resolve_schedule
from core.ruc.state import input_fingerprint, save_state
from core.ruc.step import BATCH_REFURBISH_THRESHOLD, PassSettings, train_pass
from core.ruc.views import FeatureViews, ImageViews, Views, is_feature_input
from core.sampling import ensure_clean_per_cluster
from core.spec import RefineSpec


@dataclass
class RucOutput:
    """Result of ``train_ruc``.

    models: the trained networks (2 with co-training, 1 without), in eval mode on the device.
    probs: (N, K) float32 on the CPU, the ensemble's mean softmax on the unaugmented images.
    clean_mask: (N,) bool on the CPU, the final clean set (refurbished samples included).
    pseudo_labels: (N,) int64 on the CPU, labels of the clean set after refurbishing (unclean
        entries keep their initial label).
    per_epoch: one metrics dict per epoch (also sent through hooks.on_epoch).
    effective: the schedule values the run used (core.ruc.schedules.Schedule.report()).
    """

    models: tuple[ClusteringModel, ...]
    probs: torch.Tensor
    clean_mask: torch.Tensor
    pseudo_labels: torch.Tensor
    per_epoch: list[dict[str, Any]] = field(default_factory=list)
    effective: dict[str, Any] = field(default_factory=dict)


def _validate(
    base_model: ClusteringModel,
    images_u8: torch.Tensor,
    pseudo_labels: torch.Tensor,
    clean_mask: torch.Tensor,
    num_clusters: int,
) -> None:
    features = is_feature_input(images_u8)
    if features != isinstance(base_model, FeatureClusteringModel) or (
        not features and (images_u8.dtype != torch.uint8 or images_u8.dim() != 4)
    ):
        raise CoreInputError(
            "images",
            "expected uint8 images (N, H, W, C) for an image network or float features (N, D) for a "
            f"feature network, got {images_u8.dtype} {tuple(images_u8.shape)} "
            f"for {type(base_model).__name__}",
        )
    if features and images_u8.shape[1] != base_model.mean.shape[-1]:
        raise CoreInputError(
            "features",
            f"have {images_u8.shape[1]} dimensions, the base network reads {base_model.mean.shape[-1]}",
        )
    n = images_u8.shape[0]
    if n == 0:
        raise CoreInputError("images", "no images to train on")
    if pseudo_labels.shape != (n,) or clean_mask.shape != (n,):
        raise CoreInputError(
            "pseudo_labels",
            f"pseudo_labels {tuple(pseudo_labels.shape)} and clean_mask {tuple(clean_mask.shape)} "
            f"must both be ({n},)",
        )
    if pseudo_labels.dtype.is_floating_point or clean_mask.dtype != torch.bool:
        raise CoreInputError("pseudo_labels", "pseudo_labels must be integers and clean_mask bool")
    lo, hi = int(pseudo_labels.min()), int(pseudo_labels.max())
    if lo < 0 or hi >= num_clusters:
        raise CoreInputError("pseudo_labels", f"labels must lie in [0, {num_clusters}), got [{lo}, {hi}]")
    head = base_model.cluster_head[base_model.active_head]
    if head.out_features != num_clusters:
        raise CoreInputError(
            "num_clusters", f"base model's head has {head.out_features} outputs, expected {num_clusters}"
        )


def _guard_clean(
    clean: torch.Tensor,
    pseudo: torch.Tensor,
    base_model: ClusteringModel,
    images: torch.Tensor,
    spec: RefineSpec,
    num_clusters: int,
    hooks: RunHooks,
) -> torch.Tensor:
    """The sampling fallback for direct callers: an empty clean set gives NaN losses.

    The pipeline applies core.sampling.ensure_clean_per_cluster before calling us, so there this
    changes nothing; the base model's probability of each pseudo-label is computed only if needed.
    """
    need = max(spec.min_clean_per_cluster, 0 if bool(clean.any()) else 1)
    members = torch.bincount(pseudo, minlength=num_clusters)
    have = torch.bincount(pseudo[clean], minlength=num_clusters)
    if not bool(((have < need) & (members > 0)).any()):
        return clean
    probs = predict_softmax(base_model, images, batch_size=INFERENCE_BATCH_FACTOR * spec.batch_size)
    confidence = probs.gather(1, pseudo[:, None])[:, 0]
    fixed, notes = ensure_clean_per_cluster(
        clean.cpu(),
        pseudo.cpu(),
        confidence.cpu(),
        min_per_cluster=spec.min_clean_per_cluster,
        fraction=spec.fallback_fraction,
        num_clusters=num_clusters,
    )
    for note in notes:
        hooks.on_event("warning", f"RUC clean-set fallback: {note}")
    return fixed.to(clean.device)


def _build_runtime(
    base_model: ClusteringModel,
    images: torch.Tensor,
    clean: torch.Tensor,
    pseudo: torch.Tensor,
    spec: RefineSpec,
    *,
    num_clusters: int,
    seed: int,
    perf: PerfOptions | None,
) -> Runtime:
    dev = images.device
    features = is_feature_input(images)
    channels_last, autocast_dtype = resolve_perf(dev, spec, perf, features=features)
    views: Views = (
        FeatureViews.of(images, spec.feature_views) if features else ImageViews(spec, channels_last)
    )
    in_channels = images.shape[3] if images.dim() == 4 else 0
    n_nets = 2 if spec.co_training else 1
    nets = []
    for k in range(n_nets):
        net = build_net(base_model, spec, k, seed=seed, in_channels=in_channels, num_clusters=num_clusters)
        nets.append(place_network(net, dev, channels_last))
    return Runtime(
        nets=nets,
        optimizers=build_optimizers(nets, spec),
        clean=clean,
        pseudo=pseudo,
        table=torch.zeros(n_nets, images.shape[0], num_clusters, device=dev),
        ready=torch.zeros(n_nets, dtype=torch.bool, device=dev),
        generator=torch.Generator().manual_seed(seed),
        np_rng=np.random.default_rng(seed),
        channels_last=channels_last,
        autocast_dtype=autocast_dtype,
        nograd_chunk=nograd_chunk_size(dev, spec.batch_size),
        views=views,
        fold_batchnorm=resolve_fold(perf) and not is_feature_input(images),  # MLPs: no convs
    )


def _refurbish_epoch_end(rt: Runtime, spec: RefineSpec, tau2: float) -> None:
    if not (spec.refurbish and spec.refurbish_mode == "epoch"):
        return
    unclean_idx = (~rt.clean).nonzero().squeeze(1)
    if unclean_idx.numel():
        accept, labels = refurbish_candidates(rt.table[:, unclean_idx], tau2)
        apply_refurbish(rt.clean, rt.pseudo, unclean_idx, accept, labels)


def _run_epoch(
    epoch: int,
    rt: Runtime,
    images: torch.Tensor,
    spec: RefineSpec,
    sched: Schedule,
    num_clusters: int,
    hooks: RunHooks,
) -> dict[str, Any]:
    """Train both passes of ``epoch`` (0-based), refurbish; returns the epoch's metrics."""
    t0 = time.perf_counter()
    lr = cosine_lr(spec.lr, epoch, spec.epochs)
    set_lr(rt.optimizers, lr)
    ps = PassSettings(
        num_clusters=num_clusters,
        label_smoothing=sched.label_smoothing,
        lambda_u=sched.lambda_u_at(epoch),
        epoch=epoch + 1,
    )
    clean_before = int(rt.clean.sum())
    sums = torch.zeros(3, device=images.device)
    steps = 0
    n_nets = len(rt.nets)
    if spec.interleave and n_nets == 2:  # both passes at once, sharing the label guesses
        sums, steps = train_interleaved(rt, images, spec, ps, hooks)
        hooks.on_progress((epoch + 1) / spec.epochs, epoch + 1, spec.epochs)
    else:
        for k in range(n_nets):
            s, st = train_pass(k, rt, images, spec, ps, hooks)
            sums += s
            steps += st
            hooks.on_progress((epoch * n_nets + k + 1) / (spec.epochs * n_nets), epoch + 1, spec.epochs)
    tau2 = BATCH_REFURBISH_THRESHOLD if spec.refurbish_mode == "batch" else sched.tau2_at(epoch)
    _refurbish_epoch_end(rt, spec, tau2)
    loss_xs, loss_x, loss_u = (sums / max(steps, 1)).tolist()
    clean_size = int(rt.clean.sum())
    return {
        "epoch": epoch + 1,
        "loss_xs": loss_xs if spec.strong_loss else None,
        "loss_x": loss_x if spec.mixmatch else None,
        "loss_u": loss_u if spec.mixmatch and spec.unlabeled_loss else None,
        "lambda_u_eff": ps.lambda_u if spec.mixmatch and spec.unlabeled_loss else 0.0,
        "tau2": tau2 if spec.refurbish else None,
        "clean_size": clean_size,
        "refurbished": clean_size - clean_before,
        "lr": lr,
        "seconds": time.perf_counter() - t0,
        "mean_confidence": float(rt.table[rt.ready].max(dim=2).values.mean()),
    }


@collective("ruc.train", local=("device", "hooks", "checkpoint_path"))
def train_ruc(
    base_model: ClusteringModel,
    images_u8: torch.Tensor,
    pseudo_labels: torch.Tensor,
    clean_mask: torch.Tensor,
    spec: RefineSpec,
    *,
    num_clusters: int,
    seed: int,
    device: str | torch.device,
    hooks: RunHooks | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = True,
    perf: PerfOptions | None = None,
    labels: np.ndarray | None = None,
) -> RucOutput:
    """Retrain ``base_model``'s clustering with RUC (Algorithm 1) and return the refined ensemble.

    images_u8: (N, H, W, C) uint8 images, or (N, D) float32 features for a FeatureClusteringModel
    base (MLP heads, core.ruc.views.FeatureViews), ideally already on ``device`` (moved otherwise).
    pseudo_labels: (N,) int64 in [0, num_clusters); clean_mask: (N,) bool, the clean set X.
    labels: optional (N,) ground truth, for per-epoch clean-set/refurbishing quality only.
    A checkpoint is written to ``checkpoint_path`` before the first epoch and after every epoch;
    with ``resume`` a compatible checkpoint there is continued. ``hooks.should_stop`` is checked
    every STOP_CHECK_EVERY steps and after each epoch; it raises StopRequested, leaving the
    checkpoint of the last completed epoch on disk. Raises TrainingDiverged on a non-finite loss.
    """
    hooks = hooks or RunHooks()
    dev = torch.device(device)
    _validate(base_model, images_u8, pseudo_labels, clean_mask, num_clusters)
    sched = resolve_schedule(spec, num_clusters=num_clusters, num_samples=images_u8.shape[0])
    # Every value below reads the effective spec: defaults that follow the data are filled in.
    spec = spec.model_copy(update={"batch_size": sched.batch_size, "label_smoothing": sched.label_smoothing})
    images = images_u8.to(dev)
    pseudo = pseudo_labels.to(dev, torch.int64).clone()
    clean = _guard_clean(clean_mask.to(dev).clone(), pseudo, base_model, images, spec, num_clusters, hooks)
    initial_clean = clean.clone()
    fingerprint = input_fingerprint(
        images_shape=tuple(images.shape),
        pseudo_labels=pseudo,
        clean_mask=clean,
        spec=spec,
        num_clusters=num_clusters,
        seed=seed,
    )
    rt = _build_runtime(
        base_model, images, clean, pseudo, spec, num_clusters=num_clusters, seed=seed, perf=perf
    )

    start_epoch = 0
    per_epoch: list[dict[str, Any]] = []
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    state = None
    if ckpt is not None and resume and ckpt.exists():
        state = try_resume(ckpt, fingerprint, len(rt.nets), hooks)
    state = broadcast_tree(state, device=dev)  # rank 0 decides for all ranks (identity on one)
    if state is not None:
        rt.restore(state)
        start_epoch = state.epoch
        per_epoch = list(state.per_epoch)
    elif ckpt is not None:
        save_state(rt.snapshot(fingerprint, 0, per_epoch), ckpt)

    hooks.check_stop("before the first RUC epoch")
    for epoch in range(start_epoch, spec.epochs):
        metrics = _run_epoch(epoch, rt, images, spec, sched, num_clusters, hooks)
        if labels is not None:
            metrics.update(label_metrics(rt.clean, rt.pseudo, initial_clean, labels, num_clusters))
        per_epoch.append(metrics)
        check_state([rt.clean, rt.pseudo, rt.table], rt.nets, f"RUC epoch {epoch + 1}")
        # Reported before it is checkpointed: a crash between the two repeats the epoch (whose report
        # the worker replaces); the other order could leave a resumable epoch that was never reported.
        hooks.on_epoch(dict(metrics))
        if ckpt is not None:
            save_state(rt.snapshot(fingerprint, epoch + 1, per_epoch), ckpt)
        hooks.check_stop(f"after RUC epoch {epoch + 1}")

    if bool(rt.ready.all()):
        probs = rt.table.mean(dim=0)  # every table is its network's final prediction
    else:
        probs = predict_ensemble(
            rt.nets,
            images,
            INFERENCE_BATCH_FACTOR * rt.nograd_chunk,
            chunk=rt.nograd_chunk,
            channels_last=rt.channels_last,
            autocast_dtype=rt.autocast_dtype,
        )
    for net in rt.nets:
        net.eval()
    return RucOutput(
        models=tuple(rt.nets),
        probs=probs.float().cpu(),
        clean_mask=rt.clean.cpu(),
        pseudo_labels=rt.pseudo.cpu(),
        per_epoch=per_epoch,
        effective=sched.report(),
    )


def predict_ensemble(
    nets: tuple[torch.nn.Module, ...] | list[torch.nn.Module],
    images: torch.Tensor,
    batch_size: int,
    *,
    chunk: int | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean softmax of ``nets`` (eval mode, no graph) on uint8 images (N, H, W, C).

    Returns (N, K) float32 on the images' device; rows sum to 1. The final RUC prediction:
    with ``batch_size`` = INFERENCE_BATCH_FACTOR x ``chunk`` and the run's arithmetic, each
    network's term is exactly its prediction table (``step.train_pass``), which is what
    ``core.predict.Predictor`` relies on to assign new images as the job assigned its own.
    """
    if images.shape[0] == 0:
        raise CoreInputError("images", "no images to predict")
    probs = [
        predict_softmax(
            net,
            images,
            batch_size=batch_size,
            chunk=chunk,
            channels_last=channels_last,
            autocast_dtype=autocast_dtype,
        )
        for net in nets
    ]
    return torch.stack(probs).mean(dim=0)
