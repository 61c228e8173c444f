"""The base stage of a feature job: clustering and the base network on a precomputed feature space.

The features are the frozen "backbone" output: kmeans, auto-K, the SCAN heads and DEC/IDEC/DCN
cluster them as they cluster an uploaded embedding model's features, and ``labels`` takes uploaded
assignments. The base network is a FeatureClusteringModel (an MLP head on the standardised
features, the architecture RUC's networks then copy), fitted to the method's targets with plain
cross-entropy under the weak feature view, so it is as overconfident as an image job's base
network. Metric sampling searches the feature space itself (the space the client chose).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from core.clustering.base_steps import (
    P_FEATURES,
    BaseOutput,
    cluster_targets,
    feature_space_info,
    fit_base,
)
from core.clustering.methods import MethodInputs
from core.hooks import RunHooks
from core.models import FeatureClusteringModel, feature_statistics
from core.ruc.views import FeatureViews
from core.spec import JobSpec

if TYPE_CHECKING:
    from core.datasets import ImageDataset

FEATURE_SOURCE = "dataset_features"


def run_feature_base(
    spec: JobSpec, dataset: ImageDataset, space: str, *, device: torch.device, hooks: RunHooks
) -> BaseOutput:
    """``core.clustering.base.run_base`` for a feature job on feature space ``space``."""
    x = dataset.features[space].to(device)  # (N, D) float32
    info: dict[str, Any] = {
        "method": spec.base.method,
        "input": "features",
        "feature_space": feature_space_info(space, x),
    }
    hooks.on_progress(P_FEATURES, None, None)
    inputs = MethodInputs(None, x, None, FEATURE_SOURCE)
    targets, _method_embedding, p_fit = cluster_targets(spec, dataset, inputs, info, hooks)
    mean, std = feature_statistics(x)
    model = FeatureClusteringModel(
        x.shape[1], spec.refine.feature_hidden_dim, int(info["num_clusters"]), mean=mean, std=std
    ).to(device)
    info["backbone_source"] = "new"
    views = FeatureViews(mean=mean, std=std, cfg=spec.refine.feature_views)
    return fit_base(model, x, targets, spec, info, hooks, p_fit, None, x, FEATURE_SOURCE, views.weak)
