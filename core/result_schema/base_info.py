"""``base_info``: what the base clustering stage did. A typed core for every method, typed blocks for
PCA, k-means, auto-K and the pretext training, and open blocks where the content truly varies by
method (``scan``, ``dec``, ``idec``, ``dcn``, ``gcc``, ``and``) or by uploaded checkpoint."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from core.result_schema.common import Block, OpenBlock


class Normalisation(Block):
    """``(x - mean) / std`` applied to [0, 1] pixels inside the networks."""

    mean: list[float] | None = Field(
        description="per-channel mean (1 or 3 values); null when computed at load"
    )
    std: list[float] | None = Field(description="per-channel std (1 or 3 values); null when computed at load")
    source: str = Field(
        description="where the values come from: spec, dataset, checkpoint_metadata, upload, ..."
    )
    preset: str | None = Field(description="preset name when one was used")


class PcaInfo(Block):
    """PCA of the pixels, the features when no embedding model is given."""

    dim: int = Field(description="number of components kept")
    explained_variance: float = Field(
        description="share of the pixel variance the components keep, in [0, 1]"
    )
    method: str = Field(description="how PCA was computed (exact or randomized)")


class FeatureSpaceInfo(Block):
    """The dataset's feature space the job clustered in (base.features, or a feature job's space)."""

    name: str = Field(description="space name: default (npz array 'features') or <name> of features_<name>")
    dim: int = Field(description="dimension D")
    mean_std: float = Field(
        description="mean over dimensions of each dimension's standard deviation (feature units); a feature "
        "job's attack radii are multiples of it"
    )


class KmeansInfo(Block):
    """k-means on the features."""

    inertia: float = Field(
        description="sum of squared distances to the nearest centre (feature units squared)"
    )
    restarts: int = Field(description="k-means++ restarts; the best is kept")
    iterations: int = Field(description="Lloyd iterations of the kept restart")
    cluster_sizes: list[int] = Field(description="images per k-means cluster, K values")


class AutoKVote(Block):
    """One estimator's answer."""

    raw: int = Field(description="K the estimator answered before clipping to [k_min, k_max]")
    vote: int = Field(description="K it votes for, clipped to [k_min, k_max]")
    censored: Literal["upper", "lower"] | None = Field(
        description="the vote sits at a range end and may be cut off"
    )
    reason: str | None = Field(description="why it is censored")


class AutoKInfo(Block):
    """The estimate of K (base.auto_k)."""

    k: int = Field(description="the chosen number of clusters")
    votes: dict[str, int] = Field(description="estimator -> its vote")
    sample_size: int = Field(description="images the estimators saw (a seeded subsample when N is large)")
    details: dict[str, Any] = Field(
        description="each estimator's own facts (scores per k); varies by estimator"
    )
    estimators: dict[str, AutoKVote] = Field(description="estimator -> raw, vote and censoring")
    consensus: dict[str, Any] = Field(description="how the votes were combined (rule, counted votes)")


class PretextInfo(Block):
    """SimCLR pretext training of the embedding network (base.pretext)."""

    backbone: str = Field(description="backbone trained")
    final_loss: float | None = Field(description="NT-Xent loss of the last epoch")
    per_epoch: list[dict[str, Any]] = Field(description="one row per pretext epoch (epoch, loss, ...)")


class MethodInfo(OpenBlock):
    """A deep clustering method's facts; keys besides these vary by method (losses, rounds, knn, ...)."""

    cluster_sizes: list[int] = Field(description="images per cluster of the method's assignments, K values")
    per_epoch: list[dict[str, Any]] = Field(description="one row per method epoch (phase, epoch, losses)")


class CheckpointInfo(OpenBlock):
    """Facts of an uploaded checkpoint (id, layout, normalisation, ...); the keys vary by checkpoint kind."""


class BaseInfo(Block):
    """What the base stage did; which optional blocks are present depends on base.method."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: str = Field(description="base.method: kmeans, labels, checkpoint, scan, dec, idec, dcn, gcc, and")
    input: Literal["images", "features"] | None = Field(
        default=None,
        description="what the base network and RUC's networks read: images (CNNs) or features (MLP heads)",
    )
    feature_space: FeatureSpaceInfo | None = Field(
        default=None, description="the dataset's feature space clustered in, when one was used"
    )
    num_clusters: int = Field(description="K the base produced (the auto-K estimate when asked)")
    normalisation: Normalisation | None = Field(
        default=None, description="input normalisation of the base network"
    )
    backbone: str | None = Field(
        default=None, description="backbone of the base network (mlp: a feature job's MLP head)"
    )
    backbone_source: str | None = Field(default=None, description="new, embedding_checkpoint, pretext, ...")
    fit_epochs: int | None = Field(
        default=None, description="epochs the base network was fitted to the targets"
    )
    fit_final_loss: float | None = Field(default=None, description="cross-entropy of the last fit epoch")
    agreement_with_targets: float | None = Field(
        default=None, description="share of images whose fitted network's cluster is its target, in [0, 1]"
    )
    embedding_source: str | None = Field(default=None, description="where the clean-set embedding comes from")
    feature_source: str | None = Field(
        default=None, description="features clustered: pca, embedding_checkpoint, pretext, dataset_features"
    )
    assignments: Literal["probabilities", "hard"] | None = Field(
        default=None, description="labels method: the uploaded assignments' kind"
    )
    reused_from_cache: bool = Field(description="true when a resumed job reused its cached base output")
    pca: PcaInfo | None = Field(
        default=None, description="the PCA features, when no embedding model was given"
    )
    kmeans: KmeansInfo | None = Field(default=None, description="kmeans method only")
    auto_k: AutoKInfo | None = Field(
        default=None, description="the estimate of K, when base.auto_k was given"
    )
    pretext: PretextInfo | None = Field(
        default=None, description="the pretext training, when base.pretext was given"
    )
    checkpoint: CheckpointInfo | None = Field(
        default=None, description="checkpoint method: the clustering checkpoint"
    )
    embedding_checkpoint: CheckpointInfo | None = Field(
        default=None, description="the uploaded embedding checkpoint"
    )
    scan: MethodInfo | None = Field(default=None, description="scan method only")
    dec: MethodInfo | None = Field(default=None, description="dec method only")
    idec: MethodInfo | None = Field(default=None, description="idec method only")
    dcn: MethodInfo | None = Field(default=None, description="dcn method only")
    gcc: MethodInfo | None = Field(default=None, description="gcc method only")
    and_: MethodInfo | None = Field(default=None, alias="and", description="and method only")
