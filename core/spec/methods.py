"""Blocks of ``base``: the settings of each base clustering method, auto-K and the pretext step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.spec.common import _Spec

AutoKEstimator = Literal["silhouette", "eigengap", "xmeans", "gmeans", "dpmeans"]


class AutoKSpec(_Spec):
    """Automatic cluster count (core.clustering.autok): each estimator votes, the consensus decides."""

    estimators: list[AutoKEstimator] = Field(
        default_factory=lambda: ["silhouette", "eigengap", "xmeans", "gmeans", "dpmeans"],
        min_length=1,
        max_length=5,
    )
    k_min: int = Field(default=2, ge=2, le=1000)
    k_max: int = Field(default=20, ge=2, le=1000)
    sample_cap: int = Field(
        default=2000,
        ge=50,
        le=100_000,
        description="estimators run on a seeded random sample of at most this many",
    )
    consensus: Literal["median", "mode"] = Field(
        default="median",
        description="median: the lower median of the votes; mode: the most frequent vote, ties to the median "
        "of the tied values (lower one). Taken over the uncensored votes: a vote at a bound of "
        "[k_min, k_max] (x-means/g-means still splitting at k_max) abstains; when all are censored, over all",
    )
    dpmeans_lambda: float | None = Field(
        default=None,
        gt=0,
        description="DP-means penalty (squared distance); default: estimated from the data",
    )

    @field_validator("estimators")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("estimators must not repeat")
        return v

    @model_validator(mode="after")
    def _range(self) -> AutoKSpec:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class ScanSpec(_Spec):
    """SCAN clustering head on fixed embeddings (Van Gansbeke et al. 2020); defaults from SCAN's configs."""

    entropy_weight: float = Field(
        default=5.0, ge=0, le=100, description="weight of the entropy term, as SCAN"
    )
    heads: int = Field(
        default=10, ge=1, le=50, description="heads trained at once; the lowest-loss head is kept"
    )
    epochs: int = Field(default=60, ge=1, le=1000)
    knn: int = Field(default=20, ge=1, le=200, description="neighbours mined in the embedding (SCAN's topk)")
    batch_size: int = Field(default=256, ge=2, le=8192)
    lr: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Adam; far above SCAN's 1e-4: only linear heads on standardised fixed features train",
    )
    self_label: bool = Field(
        default=True, description="then cross-entropy on confident samples (SCAN step 3)"
    )
    self_label_threshold: float = Field(default=0.99, gt=0, lt=1)
    self_label_epochs: int = Field(default=10, ge=1, le=1000)


class BrbSpec(_Spec):
    """Breaking the Reclustering Barrier (Miklautz et al., ICLR 2025); defaults: the paper's, MLP AE."""

    enabled: bool = False
    reset_interval: int = Field(default=20, ge=1, le=1000, description="T: epochs between soft resets")
    alpha: float = Field(
        default=0.8, ge=0, le=1, description="theta <- alpha * theta + (1 - alpha) * theta_random_init"
    )
    recluster: bool = Field(default=True, description="k-means in the latent space after each reset")
    reset_momentum: bool = Field(default=True, description="clear the optimiser state of the centroids")


class DeepClusteringSpec(_Spec):
    """DEC / IDEC / DCN on an autoencoder (over pixels, or over the uploaded embedding model's features)."""

    pretrain_epochs: int = Field(
        default=50, ge=0, le=2000, description="autoencoder reconstruction pre-training"
    )
    epochs: int = Field(default=50, ge=1, le=2000, description="clustering epochs")
    latent_dim: int = Field(default=10, ge=2, le=1024, description="DEC's 10")
    hidden_dims: list[int] = Field(
        default_factory=lambda: [500, 500, 2000],
        min_length=1,
        max_length=6,
        description="DEC's d-500-500-2000-10",
    )
    batch_size: int = Field(default=256, ge=2, le=8192)
    lr: float = Field(default=1e-3, gt=0, le=1, description="Adam, pre-training and clustering")
    student_t_alpha: float = Field(
        default=1.0, gt=0, description="degrees of freedom of DEC's soft assignment"
    )
    gamma: float = Field(
        default=0.1, ge=0, description="IDEC: weight of the clustering loss next to reconstruction"
    )
    dcn_weight: float = Field(
        default=0.5, ge=0, description="DCN: weight of the k-means loss next to reconstruction"
    )
    target_update_every: int = Field(
        default=1, ge=1, description="epochs between DEC target-distribution updates"
    )


class GccSpec(_Spec):
    """Graph Contrastive Clustering (Zhong et al., ICCV 2021)."""

    epochs: int = Field(default=50, ge=1, le=2000)
    batch_size: int = Field(default=256, ge=4, le=8192)
    lr: float = Field(default=1e-3, gt=0, le=1)
    knn: int = Field(default=5, ge=1, le=200, description="neighbours of the kNN graph (positives)")
    graph_update_every: int = Field(default=5, ge=1, description="epochs between kNN-graph rebuilds")
    features_dim: int = Field(default=128, ge=8, le=4096)
    temperature: float = Field(default=0.5, gt=0, le=10, description="representation InfoNCE temperature")
    cluster_temperature: float = Field(
        default=1.0, gt=0, le=10, description="assignment contrast temperature"
    )
    entropy_weight: float = Field(default=5.0, ge=0, le=100)
    warm_start_head: bool = Field(
        default=True,
        description="with an uploaded (or pretext) embedding model: start the assignment head at "
        "soft k-means on its backbone features instead of at random",
    )


class AndSpec(_Spec):
    """Anchor Neighbourhood Discovery (Huang et al., ICML 2019), K by k-means on the learned features."""

    rounds: int = Field(default=4, ge=1, le=20, description="curriculum rounds after round 0 (instance only)")
    epochs_per_round: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=256, ge=4, le=8192)
    lr: float = Field(default=0.03, gt=0, le=10, description="SGD, momentum 0.9")
    features_dim: int = Field(default=128, ge=8, le=4096)
    temperature: float = Field(default=0.1, gt=0, le=10, description="non-parametric classifier, AND's 0.1")
    memory_momentum: float = Field(default=0.5, ge=0, lt=1, description="memory-bank update, AND's 0.5")
    neighbours: int = Field(default=1, ge=1, le=50, description="neighbourhood size (AND's k = 1)")


class PretextSpec(_Spec):
    """SimCLR trained here when no embedding model is uploaded (SCAN's pretext step)."""

    epochs: int = Field(default=100, ge=1, le=2000)
    batch_size: int = Field(default=256, ge=4, le=8192, description="2 views each: 2B - 2 negatives per view")
    lr: float = Field(default=1e-3, gt=0, le=1, description="Adam")
    weight_decay: float = Field(default=1e-6, ge=0, le=1)
    temperature: float = Field(default=0.5, gt=0, le=10, description="NT-Xent temperature")
    features_dim: int = Field(default=128, ge=8, le=4096, description="projection size (SCAN's 128)")
