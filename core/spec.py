"""The job spec: what a client asks for, with the paper's defaults.

Pure pydantic, no torch: the API validates specs with this module and never
imports torch. Defaults come from the RUC paper, appendix A.2, unless noted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

BackboneName = Literal["resnet18_cifar", "resnet18", "resnet34", "resnet50", "small_cnn"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        "of the tied values (lower one)",
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


class BaseSpec(_Spec):
    """How the pseudo-labels that RUC refines are obtained."""

    method: Literal["kmeans", "checkpoint", "labels", "scan", "dec", "idec", "dcn", "gcc", "and"] = "kmeans"
    embedding_checkpoint_id: str | None = Field(
        default=None,
        description="Uploaded SimCLR-layout embedding model: k-means and metric sampling use it.",
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
        description="Backbone of the base network when none is uploaded (default: chosen by image size).",
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
    num_clusters: int | None = Field(
        default=None, ge=2, le=1000, description="required unless base.auto_k estimates it"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    base: BaseSpec = Field(default_factory=BaseSpec)
    refine: RefineSpec = Field(default_factory=RefineSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    callback_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _cluster_count(self) -> JobSpec:
        problem = None
        if self.num_clusters is None and self.base.auto_k is None:
            problem = "num_clusters is required unless base.auto_k is given"
        elif self.num_clusters is not None and self.base.auto_k is not None:
            problem = "give either num_clusters or base.auto_k, not both"
        if problem is not None:
            # A ValueError here would be located at the whole body; the client fixes num_clusters.
            raise ValidationError.from_exception_data(
                "JobSpec",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("value_error", problem),
                        loc=("num_clusters",),
                        input=self.num_clusters,
                    )
                ],
            )
        return self
