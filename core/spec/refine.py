"""``refine``: RUC retraining (Algorithm 1), defaults from the paper's A.2."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.spec.common import BackboneName, _Spec


class RefineSpec(_Spec):
    """RUC retraining (Algorithm 1). Each robust-learning component has a switch for ablations."""

    strategy: Literal["auto", "confidence", "metric", "hybrid"] = Field(
        default="auto",
        description="clean-set selection (section 3.1). confidence: max prob > tau1; metric: the kNN "
        "majority pseudo-label agrees; hybrid: both (the paper). auto: hybrid for each cluster where at "
        "least auto_min_fraction of its members pass it, else the cluster's auto_cluster_fraction "
        "best-ranked kNN-consistent members (kNN agreement + confidence): usable whatever the base "
        "network's confidence (core.sampling.auto)",
    )
    auto_min_fraction: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="auto: share of a cluster that must pass hybrid for the cluster to use hybrid",
    )
    auto_cluster_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="auto: share of a cluster kept, by rank, where hybrid keeps too few",
    )
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
        default=200,
        ge=1,
        description="lambda_u is scaled by clip(epoch / this, 0.1, 1) as in the authors' script",
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
        description="A cluster with fewer clean samples gets its most confident members added "
        "(documented fallback)",
    )
    fallback_fraction: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Fraction of a starved cluster, by confidence, that the fallback adds",
    )
    backbone: BackboneName | None = Field(default=None, description="default: the base model's backbone")
    reinit_head: bool = True
    mixed_precision: bool = Field(
        default=True,
        description="bf16 autocast (with channels_last) on CUDA and on CPUs with native bf16 "
        "(AVX512-BF16/AMX); other CPUs always run float32",
    )
