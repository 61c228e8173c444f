"""The stages before training: loading, base clustering (cached) and clean-set sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.clustering.base import BaseOutput, run_base
from core.errors import CoreInputError
from core.pipeline.base_cache import base_fingerprint, load_base, save_base
from core.pipeline.context import JobContext, seed_everything
from core.pipeline.layout import BASE_CACHE
from core.sampling import ensure_clean_per_cluster, select_clean_set
from core.spec import resolve_inputs
from core.spec.refine import effective_knn_k


@dataclass
class CleanSelection:
    """The clean set RUC starts from. mask: (N,) bool on the device, every non-empty cluster covered.

    selected_size: what the strategy chose before the per-cluster fallback; knn_k: the k used;
    decision: the strategy's inputs and choice (``core.sampling.select_clean_set``).
    """

    mask: torch.Tensor
    selected_size: int
    knn_k: int
    decision: dict[str, Any]
    fallback: list[str]


def loading(ctx: JobContext) -> tuple[torch.Tensor, np.ndarray | None]:
    """Check the data against the spec; what the networks read on the device (uint8 images
    (N, H, W, C), or float32 features (N, D) for a feature job) and the labels (N,) or None."""
    spec, ds = ctx.spec, ctx.dataset
    seed_everything(spec.seed)
    ctx.inputs = resolve_inputs(spec, has_images=ds.has_images, feature_spaces=ds.feature_dims())
    what = "images" if ctx.inputs.kind == "images" else "samples"
    if ds.n < 2:
        raise CoreInputError(what, f"a job needs at least 2 {what}, the dataset has {ds.n}")
    if spec.num_clusters is not None and spec.num_clusters > ds.n:
        raise CoreInputError(
            "num_clusters", f"{spec.num_clusters} clusters requested but the dataset has only {ds.n} {what}"
        )
    # stays on the device for every later stage
    if ctx.inputs.kind == "features":
        assert ctx.inputs.space is not None
        data = ds.features[ctx.inputs.space].to(ctx.device)
    else:
        assert ds.images is not None
        data = ds.images.to(ctx.device)
    y = ds.labels.cpu().numpy() if ds.labels is not None else None
    ctx.hooks.on_progress(1.0, None, None)
    return data, y


def base_clustering(ctx: JobContext) -> tuple[BaseOutput, bool]:
    """The base output (from ``work_dir/base.pt`` when it belongs to this job) and whether it was cached."""
    cache = ctx.work_dir / BASE_CACHE
    fingerprint = base_fingerprint(ctx.spec, ctx.dataset, ctx.checkpoint_paths)
    base = load_base(cache, fingerprint, ctx.device) if ctx.resume else None
    cached = base is not None
    if base is None:
        base = run_base(
            ctx.spec, ctx.dataset, device=ctx.device, checkpoint_paths=ctx.checkpoint_paths, hooks=ctx.hooks
        )
        save_base(base, cache, fingerprint)
    ctx.hooks.on_progress(1.0, None, None)
    if cached:
        ctx.hooks.on_event("info", "base clustering reused from the job's cache (resumed job)")
    return base, cached


def sampling(ctx: JobContext, base: BaseOutput, k: int) -> CleanSelection:
    """The clean set by ``refine.strategy``, then the per-cluster fallback (>= 1 per non-empty cluster).

    The fallback always asks for at least one clean sample per non-empty cluster (RUC needs a label
    for every class), whatever ``refine.min_clean_per_cluster`` says.
    """
    r = ctx.spec.refine
    knn_k = effective_knn_k(r.knn_k, num_samples=ctx.dataset.n, num_clusters=k)
    if r.knn_k is not None and knn_k < r.knn_k and r.strategy != "confidence":
        ctx.warn(f"refine.knn_k={r.knn_k} exceeds N-1; using k={knn_k}")
    mask, decision = select_clean_set(
        r.strategy,
        probs=base.probs,
        pseudo=base.pseudo_labels,
        embedding=base.embedding,
        threshold=r.confidence_threshold,
        k=knn_k,
        min_fraction=r.auto_min_fraction,
        cluster_fraction=r.auto_cluster_fraction,
    )
    clean, notes = ensure_clean_per_cluster(
        mask,
        base.pseudo_labels,
        base.probs.max(dim=1).values,
        min_per_cluster=max(1, r.min_clean_per_cluster),
        fraction=r.fallback_fraction,
        num_clusters=k,
    )
    for note in notes:
        ctx.warn(f"clean-set fallback: {note}")
    ctx.hooks.on_progress(1.0, None, None)
    return CleanSelection(
        mask=clean, selected_size=int(mask.sum()), knn_k=knn_k, decision=decision, fallback=notes
    )
