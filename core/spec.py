"""The job spec: what a client asks for, with the paper's defaults.

Pure pydantic, no torch: the API validates specs with this module and never
imports torch. Defaults come from the RUC paper, appendix A.2, unless noted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

BackboneName = Literal["resnet18_cifar", "resnet18", "resnet34", "resnet50", "small_cnn"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(_Spec):
    """How the pseudo-labels that RUC refines are obtained."""

    method: Literal["kmeans", "checkpoint", "labels"] = "kmeans"
    embedding_checkpoint_id: str | None = Field(
        default=None, description="Uploaded SimCLR-layout embedding model: k-means and metric sampling use it."
    )
    clustering_checkpoint_id: str | None = Field(
        default=None, description="Uploaded SCAN-layout clustering model (method=checkpoint)."
    )
    head: int | None = Field(
        default=None, ge=0, description="Cluster head to use from a multi-head checkpoint (default: the file's 'head')."
    )
    backbone: BackboneName | None = Field(
        default=None,
        description="Backbone of the base network when none is uploaded (default: chosen by image size).",
    )
    pca_dim: int = Field(default=50, ge=2, le=4096, description="k-means on raw pixels: PCA dimension.")
    kmeans_restarts: int = Field(default=10, ge=1, le=100, description="k-means++ restarts (best inertia kept).")
    fit_epochs: int = Field(
        default=30,
        ge=1,
        le=1000,
        description="Epochs to train the base network on k-means/uploaded assignments (plain cross-entropy, "
        "which makes it as overconfident as the clustering models RUC is meant to fix).",
    )

    @model_validator(mode="after")
    def _needs(self) -> BaseSpec:
        if self.method == "checkpoint" and not self.clustering_checkpoint_id:
            raise ValueError("base.clustering_checkpoint_id is required when base.method is 'checkpoint'")
        return self


class RefineSpec(_Spec):
    """RUC retraining (Algorithm 1). Each robust-learning component has a switch for ablations."""

    strategy: Literal["confidence", "metric", "hybrid"] = "hybrid"
    confidence_threshold: float = Field(default=0.99, gt=0, lt=1, description="tau1, A.2")
    knn_k: int = Field(default=100, ge=1, le=1000, description="k of the metric strategy, A.2")
    epochs: int = Field(default=200, ge=1, le=2000)
    batch_size: int = Field(default=200, ge=2, le=4096)
    lr: float = Field(default=0.01, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    label_smoothing: float = Field(default=0.5, ge=0, lt=1, description="epsilon of Eq. (8); 0 turns it off")
    lambda_u: float = Field(default=25.0, ge=0, description="weight of the unlabeled MixMatch loss, Eq. (10)")
    lambda_u_rampup_epochs: int = Field(
        default=200, ge=1, description="lambda_u is scaled by clip(epoch / this, 0.1, 1) as in the authors' script"
    )
    sharpen_temperature: float = Field(default=0.5, gt=0, le=10)
    mixup_alpha: float = Field(default=4.0, gt=0)
    weak_augmentations: int = Field(default=2, ge=1, le=8, description="M of Algorithm 1")
    randaugment_n: int = Field(default=2, ge=1, le=5)
    randaugment_m: int = Field(default=2, ge=1, le=30)
    refurbish_threshold: float = Field(default=0.9, gt=0, le=1, description="tau2 at epoch 0")
    refurbish_step: float = Field(default=0.02, ge=0, le=1)
    refurbish_every: int = Field(default=40, ge=1)
    refurbish_mode: Literal["epoch", "batch"] = Field(
        default="epoch",
        description="epoch: the paper (end of epoch, more confident network, rising tau2); "
        "batch: the authors' script (inside the batch loop, fixed 0.99, current network)",
    )
    co_training: bool = True
    mixmatch: bool = True
    refurbish: bool = True
    min_clean_per_cluster: int = Field(
        default=1,
        ge=0,
        description="A cluster with fewer clean samples gets its most confident members added (documented fallback)",
    )
    fallback_fraction: float = Field(
        default=0.1, gt=0, le=1, description="Fraction of a starved cluster, by confidence, that the fallback adds"
    )
    backbone: BackboneName | None = Field(default=None, description="default: the base model's backbone")
    reinit_head: bool = True
    mixed_precision: bool = Field(default=True, description="bf16 autocast on CUDA; ignored on CPU")


class AttackSpec(_Spec):
    kind: Literal["fgsm", "bim"]
    eps: list[float] = Field(default=[2 / 255, 4 / 255, 8 / 255], min_length=1, max_length=16)
    steps: int = Field(default=5, ge=1, le=100, description="BIM iterations, step eps/steps")

    @field_validator("eps")
    @classmethod
    def _eps_range(cls, v: list[float]) -> list[float]:
        for e in v:
            if not 0 < e <= 1:
                raise ValueError(f"each eps must be in (0, 1] (pixel scale [0,1]); got {e}")
        return v


class EvaluateSpec(_Spec):
    ece_bins: int = Field(default=15, ge=2, le=100)
    attacks: list[AttackSpec] = Field(
        default_factory=lambda: [AttackSpec(kind="fgsm"), AttackSpec(kind="bim")], max_length=8
    )
    attack_max_samples: int = Field(
        default=2000, ge=1, description="Attacks run on a fixed random subset of this many images"
    )


class JobSpec(_Spec):
    dataset_id: str = Field(min_length=1, max_length=64)
    num_clusters: int = Field(ge=2, le=1000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    base: BaseSpec = Field(default_factory=BaseSpec)
    refine: RefineSpec = Field(default_factory=RefineSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    callback_url: HttpUrl | None = None
