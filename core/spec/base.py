"""``base``: how the pseudo-labels that RUC refines are obtained."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from core.spec.common import BackboneName, NormalisationSpec, _Spec
from core.spec.features import SPACE_NAME_PATTERN
from core.spec.methods import (
    AndSpec,
    AutoKSpec,
    BrbSpec,
    DeepClusteringSpec,
    GccSpec,
    PretextSpec,
    ScanSpec,
)


class BaseSpec(_Spec):
    """How the pseudo-labels that RUC refines are obtained."""

    method: Literal["kmeans", "checkpoint", "labels", "scan", "dec", "idec", "dcn", "gcc", "and"] = "kmeans"
    embedding_checkpoint_id: str | None = Field(
        default=None,
        description="Uploaded SimCLR-layout embedding model: k-means and metric sampling use it.",
    )
    features: str | None = Field(
        default=None,
        pattern=SPACE_NAME_PATTERN,
        description="Feature space of the dataset to cluster and sample in: 'default' for the npz array "
        "'features', 'clip' for 'features_clip'. With images it replaces the PCA of the pixels (the "
        "networks still read images unless refine.input is 'features'). Default: none for an image "
        "job; for a feature job the only space, else 'default', else the first by name",
    )
    clustering_checkpoint_id: str | None = Field(
        default=None, description="Uploaded SCAN-layout clustering model (method=checkpoint)."
    )
    head: int | None = Field(
        default=None,
        ge=0,
        description="Cluster head to use from a multi-head checkpoint (default: the file's 'head').",
    )
    backbone: BackboneName | None = Field(
        default=None,
        description="Backbone of the base network when none is uploaded (default: chosen by image size). "
        "With an uploaded checkpoint it must match the file's layout and picks the variant where the "
        "weights cannot tell: SCAN's resnet18_cifar and resnet18_stl share every parameter (default: the "
        "upload's statement, else resnet18_stl for 96-111 px images and resnet18_cifar otherwise). A ViT "
        "checkpoint's architecture comes from its weights: leave this out for one.",
    )
    normalisation: NormalisationSpec | None = Field(
        default=None,
        description="Input normalisation of every network the base stage builds or loads (RUC's networks "
        "copy it): a preset (cifar10, cifar20, stl10, imagenet, dataset) or mean/std lists. Default: the "
        "uploaded checkpoint's statement, else its file's metadata, else imagenet for a ViT checkpoint, "
        "else the dataset's own per-channel statistics.",
    )
    pca_dim: int = Field(default=50, ge=2, le=4096, description="k-means on raw pixels: PCA dimension.")
    kmeans_restarts: int = Field(
        default=10, ge=1, le=100, description="k-means++ restarts (best inertia kept)."
    )
    fit_epochs: int = Field(
        default=30,
        ge=1,
        le=1000,
        description="Epochs to train the base network on k-means/uploaded assignments (plain cross-entropy, "
        "which makes it as overconfident as the clustering models RUC is meant to fix).",
    )

    auto_k: AutoKSpec | None = Field(
        default=None, description="estimate the cluster count (then leave num_clusters out)"
    )
    pretext: PretextSpec | None = Field(
        default=None,
        description="train a SimCLR embedding model on the job's images first; it then serves as an "
        "uploaded embedding model would (features for every method, base network's backbone)",
    )
    scan: ScanSpec = Field(default_factory=ScanSpec)
    deep: DeepClusteringSpec = Field(default_factory=DeepClusteringSpec, description="dec, idec, dcn")
    brb: BrbSpec = Field(default_factory=BrbSpec, description="soft resets for dec, idec, dcn")
    gcc: GccSpec = Field(default_factory=GccSpec)
    and_: AndSpec = Field(default_factory=AndSpec, alias="and", description="Anchor Neighbourhood Discovery")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="after")
    def _needs(self) -> BaseSpec:
        if self.method == "checkpoint" and not self.clustering_checkpoint_id:
            raise ValueError("base.clustering_checkpoint_id is required when base.method is 'checkpoint'")
        if self.pretext is not None and self.embedding_checkpoint_id is not None:
            raise ValueError(
                "base.pretext trains an embedding model; leave it out when base.embedding_checkpoint_id "
                "uploads one"
            )
        if self.features is not None and (self.embedding_checkpoint_id or self.pretext is not None):
            raise ValueError(
                "base.features gives the features to cluster; leave out base.embedding_checkpoint_id "
                "and base.pretext, which would give others"
            )
        if self.pretext is not None and self.method == "checkpoint":
            raise ValueError(
                "base.pretext cannot be used with base.method 'checkpoint': the model is uploaded"
            )
        if self.auto_k is not None and self.method in ("checkpoint", "labels"):
            raise ValueError(
                f"base.auto_k cannot be used with base.method '{self.method}': "
                "the cluster count comes from the upload"
            )
        return self
