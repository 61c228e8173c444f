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

With ``base.features`` (core.spec.resolve_inputs) a feature space of the dataset takes the place
of the PCA: every method clusters it and the metric strategy searches it, while the networks still
read the images. A feature job (``refine.input``: features) runs core.clustering.feature_base
instead: the same methods on the features, with an MLP head as the base network. The steps both
share live in core.clustering.base_steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.clustering.base_networks import (
    EmbeddingModel,
    JobNormalisation,
    load_clustering_checkpoint,
    load_embedding_checkpoint,
    new_base_model,
)
from core.clustering.base_steps import (
    FIT_BATCH_SIZE,
    FIT_LR,
    INFER_BATCH_SIZE,
    P_FEATURES,
    P_PRETEXT,
    BaseOutput,
    cluster_targets,
    embed_images,
    feature_space_info,
    fit_base,
    fit_base_network,
    predict_probs,
    rescaled_hooks,
    sub_hooks,
)
from core.clustering.feature_base import run_feature_base
from core.clustering.methods import METHODS, MethodInputs
from core.clustering.pretext import train_simclr
from core.errors import CoreInputError
from core.hooks import RunHooks
from core.spec import JobSpec, resolve_inputs

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

# PCA: exact eigendecomposition of the covariance up to this many pixel features, randomised above
# (a (D, D) float64 covariance at D = 4096 is 128 MiB).
EXACT_PCA_MAX_DIM = 4096


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


# ----------------------------------------------------------------------------------------------
# run_base
# ----------------------------------------------------------------------------------------------


def _check_method_and_k(spec: JobSpec, dataset: ImageDataset) -> None:
    """Raise CoreInputError for an unknown ``base.method`` or an unusable ``num_clusters``."""
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


@dataclass
class _Embedding:
    """The embedding model (uploaded or pretext-trained) and features the base methods cluster.

    hooks: the stage's hooks, rescaled to what is left of it after a pretext training.
    """

    model: EmbeddingModel | None
    normalisation: dict[str, Any] | None
    source: str
    features: torch.Tensor | None
    hooks: RunHooks


def _pretext_model(
    spec: JobSpec, images01: torch.Tensor, norm: JobNormalisation, info: dict[str, Any], hooks: RunHooks
) -> tuple[EmbeddingModel, dict[str, Any]]:
    """Train the ``base.pretext`` SimCLR model on the images; its losses land in ``info["pretext"]``."""
    assert spec.base.pretext is not None
    pretext_rows: list[dict[str, Any]] = []
    pretext_norm = norm.resolve()
    model, _ = train_simclr(
        images01,
        spec.base.pretext,
        backbone=spec.base.backbone,
        seed=spec.seed,
        hooks=sub_hooks(hooks, 0.0, P_PRETEXT, on_epoch=pretext_rows.append),
        normalisation=(pretext_norm.mean, pretext_norm.std),
    )
    info["pretext"] = {
        "backbone": model.backbone_name,
        "final_loss": pretext_rows[-1]["loss"] if pretext_rows else None,
        "per_epoch": pretext_rows,
    }
    return model, pretext_norm.as_dict()


def _embedding(
    spec: JobSpec,
    dataset: ImageDataset,
    images01: torch.Tensor,
    space: str | None,
    norm: JobNormalisation,
    checkpoint_paths: dict[str, Path],
    info: dict[str, Any],
    hooks: RunHooks,
    dev: torch.device,
) -> _Embedding:
    """The uploaded embedding model, else the pretext one, else the dataset's ``space`` (base.features)."""
    loaded = load_embedding_checkpoint(spec, checkpoint_paths, dataset, norm)
    emb_model, emb_normalisation = None, None
    if loaded is not None:
        emb_model, info["embedding_checkpoint"] = loaded
        emb_normalisation = info["embedding_checkpoint"]["normalisation"]
    emb_source = "embedding_checkpoint"
    if emb_model is None and spec.base.pretext is not None:
        emb_model, emb_normalisation = _pretext_model(spec, images01, norm, info, hooks)
        emb_source = "pretext"
        # the rest of the stage reports its progress in what is left after the pretext training
        hooks = rescaled_hooks(hooks, P_PRETEXT, 1.0)
    emb_features: torch.Tensor | None = None
    if emb_model is not None:
        emb_model = emb_model.to(dev).eval()
        emb_features = embed_images(emb_model, images01)  # (N, features_dim), unit norm
    elif space is not None:  # base.features: a space of the dataset instead of a PCA
        emb_features, emb_source = dataset.features[space].to(dev), "dataset_features"
        info["feature_space"] = feature_space_info(space, emb_features)
    return _Embedding(emb_model, emb_normalisation, emb_source, emb_features, hooks)


def _checkpoint_base(
    spec: JobSpec,
    dataset: ImageDataset,
    images01: torch.Tensor,
    emb: _Embedding,
    norm: JobNormalisation,
    checkpoint_paths: dict[str, Path],
    info: dict[str, Any],
    dev: torch.device,
) -> BaseOutput:
    """``base.method`` checkpoint: the uploaded clustering model is the base network as is."""
    k = spec.num_clusters
    assert k is not None  # BaseSpec forbids auto_k with checkpoint
    hooks = emb.hooks
    hooks.on_progress(P_FEATURES, None, None)
    model, info["checkpoint"] = load_clustering_checkpoint(
        spec, checkpoint_paths, dataset, norm, num_clusters=k
    )
    info["normalisation"] = info["checkpoint"]["normalisation"]
    model = model.to(dev).eval()
    probs = predict_probs(model, images01)
    if emb.features is not None:
        embedding, info["embedding_source"] = emb.features, emb.source
    else:
        embedding = embed_images(model.features, images01)
        info["embedding_source"] = "clustering_checkpoint_backbone"
    info["backbone"] = model.backbone_name
    info["num_clusters"] = k
    hooks.on_progress(1.0, None, None)
    return BaseOutput(model, probs.argmax(1), probs, embedding, info)


def _fitted_base(
    spec: JobSpec,
    dataset: ImageDataset,
    images01: torch.Tensor,
    emb: _Embedding,
    norm: JobNormalisation,
    info: dict[str, Any],
    dev: torch.device,
) -> BaseOutput:
    """kmeans, labels and the registered methods: cluster fixed features, fit a base network to them."""
    hooks = emb.hooks
    # The methods cluster fixed features: the embedding model's or the dataset's, else a
    # PCA of the pixels.
    pca: torch.Tensor | None = None
    if emb.features is None:
        pca, pca_info = pca_features(images01, spec.base.pca_dim)
        info["pca"] = pca_info
    feats = emb.features if emb.features is not None else pca
    assert feats is not None
    feature_source = emb.source if emb.features is not None else "pca"
    hooks.on_progress(P_FEATURES, None, None)
    inputs = MethodInputs(images01, feats, emb.model, feature_source, normalisation=norm.resolve())
    targets, method_embedding, p_fit = cluster_targets(spec, dataset, inputs, info, hooks)
    k = int(info["num_clusters"])

    model, report = new_base_model(spec, k, emb.model, dataset, norm, emb.normalisation)
    info["normalisation"] = report["normalisation"]
    info["backbone_source"] = emb.source if emb.model is not None else "new"
    # A dataset's own features are the space the client chose: metric sampling searches them too.
    own = method_embedding if emb.source != "dataset_features" else None
    return fit_base(model.to(dev), images01, targets, spec, info, hooks, p_fit, own, feats, feature_source)


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
    _check_method_and_k(spec, dataset)
    resolved = resolve_inputs(spec, has_images=dataset.has_images, feature_spaces=dataset.feature_dims())
    torch.manual_seed(spec.seed)
    if resolved.kind == "features":
        assert resolved.space is not None
        return run_feature_base(spec, dataset, resolved.space, device=dev, hooks=hooks)
    images01 = dataset.to_float(dev)  # (N, C, H, W)
    info: dict[str, Any] = {"method": spec.base.method, "input": "images"}
    norm = JobNormalisation(spec, dataset)
    emb = _embedding(spec, dataset, images01, resolved.space, norm, checkpoint_paths, info, hooks, dev)
    if spec.base.method == "checkpoint":
        return _checkpoint_base(spec, dataset, images01, emb, norm, checkpoint_paths, info, dev)
    return _fitted_base(spec, dataset, images01, emb, norm, info, dev)
