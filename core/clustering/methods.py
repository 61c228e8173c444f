"""Registry of base clustering methods selectable by ``base.method``, with one common signature.

Every method is a function::

    fn(inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks)
        -> MethodResult

that reports per-epoch progress through ``hooks.on_progress`` / ``hooks.on_epoch`` (metrics dicts
carry ``"phase": "base:<method>"`` so they are not confused with RUC's epochs) and raises
``StopRequested`` at the next epoch boundary once ``hooks.should_stop()`` is true. It runs on the
device of ``inputs.features`` and seeds its own generators from ``seed``. On a dataset of
precomputed features there are no images (``images01`` is None): only the methods that cluster
fixed vectors run (``core.spec.features.FEATURE_METHODS``).

The modules are imported lazily (``get_method``) so that importing the registry stays cheap and the
method modules can import ``MethodInputs`` / ``MethodResult`` from here without a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from core.errors import CoreInputError
from core.hooks import RunHooks

if TYPE_CHECKING:
    from core.models import EmbeddingModel, Normalisation
    from core.spec import BaseSpec

__all__ = ["METHODS", "MethodFn", "MethodInputs", "MethodResult", "get_method", "run_method"]


@dataclass
class MethodInputs:
    """What a base method may use.

    images01: (N, C, H, W) float32 in [0, 1] on the job's device; None for a feature job.
    features: (N, D) float32 fixed features on the same device: the uploaded embedding model's output
        when there is one, a feature space of the dataset, else a PCA of the pixels
        (``features_source`` says which: pca, embedding_checkpoint, pretext, dataset_features).
    embedding_model: the uploaded SimCLR-layout model (eval mode) or None; gcc and and start from
        its backbone when given.
    normalisation: what a network the method builds from scratch normalises its inputs with (the
        job's resolved choice); None: the images' own per-channel statistics.
    """

    images01: torch.Tensor | None
    features: torch.Tensor
    embedding_model: EmbeddingModel | None = None
    features_source: str = "pca"
    normalisation: Normalisation | None = None

    def fresh_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,) mean and std float32 for a network built from scratch, on the images' device."""
        from core.models import image_statistics

        if self.normalisation is not None:
            mean, std = self.normalisation.mean, self.normalisation.std
        else:
            mean, std = image_statistics(self.pixels(), channels_last=False)
        dev = self.device
        return torch.tensor(mean, device=dev), torch.tensor(std, device=dev)

    def pixels(self) -> torch.Tensor:
        """images01, for the methods that need images (run_method refuses the others a feature job)."""
        if self.images01 is None:
            raise CoreInputError("base.method", "this method needs images; the dataset has only features")
        return self.images01

    @property
    def device(self) -> torch.device:
        return self.features.device


@dataclass
class MethodResult:
    """pseudo_labels: (N,) int64 = probs.argmax(1). probs: (N, K) float32, rows sum to 1.
    embedding: (N, D') float32, the space metric sampling searches for neighbours.
    info: JSON-serialisable facts (losses, chosen head, BRB resets, ...)."""

    pseudo_labels: torch.Tensor
    probs: torch.Tensor
    embedding: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]

# name -> (module, function); dec/idec/dcn share one implementation that reads the name.
METHODS: dict[str, tuple[str, str]] = {
    "scan": ("core.clustering.scan_head", "run_scan"),
    "dec": ("core.clustering.deep_clustering", "run_dec"),
    "idec": ("core.clustering.deep_clustering", "run_idec"),
    "dcn": ("core.clustering.deep_clustering", "run_dcn"),
    "gcc": ("core.clustering.gcc", "run_gcc"),
    "and": ("core.clustering.anchor_neighbourhood", "run_and"),
}


def get_method(name: str) -> MethodFn:
    """The function registered for ``name``; CoreInputError(base.method) for unknown names."""
    try:
        module, attr = METHODS[name]
    except KeyError:
        raise CoreInputError(
            "base.method", f"unknown base method {name!r}; choose one of {sorted(METHODS)}"
        ) from None
    fn: MethodFn = getattr(importlib.import_module(module), attr)
    return fn


def run_method(
    name: str,
    inputs: MethodInputs,
    spec: BaseSpec,
    *,
    num_clusters: int,
    seed: int,
    hooks: RunHooks | None = None,
) -> MethodResult:
    """Run base method ``name`` and check its output's shapes (N,), (N, K), (N, D')."""
    from core.spec.features import FEATURE_METHODS

    n = inputs.features.shape[0]
    if inputs.images01 is None and name not in FEATURE_METHODS:
        raise CoreInputError(
            "base.method",
            f"'{name}' needs images; on precomputed features use one of {', '.join(FEATURE_METHODS)}",
        )
    if not 2 <= num_clusters <= n:
        raise CoreInputError("num_clusters", f"must be in [2, {n}] for {n} images; got {num_clusters}")
    res = get_method(name)(inputs, spec, num_clusters=num_clusters, seed=seed, hooks=hooks or RunHooks())
    assert res.pseudo_labels.shape == (n,) and res.probs.shape == (n, num_clusters)
    assert res.embedding.shape[0] == n
    return res
