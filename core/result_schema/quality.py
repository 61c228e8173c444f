"""Quality blocks: clustering reports, clean sets, robustness, agreement and collapse signs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.result_schema.common import Block, Fraction


class ReliabilityBin(Block):
    """One equal-width confidence bin of the reliability diagram."""

    lower: float = Field(description="lower edge of the bin's confidence range, in [0, 1]")
    upper: float = Field(description="upper edge of the bin's confidence range, in [0, 1]")
    count: int = Field(description="number of samples whose confidence (max probability) falls in the bin")
    accuracy: Fraction = Field(
        description="share of the bin's samples whose mapped cluster is their class; null when empty"
    )
    confidence: Fraction = Field(
        description="mean confidence of the bin's samples, in [0, 1]; null when empty"
    )


class ConfidenceHistogram(Block):
    """Histogram of the per-sample confidence (max probability), label-free."""

    edges: list[float] = Field(description="bin edges in [0, 1], ece_bins + 1 values")
    counts: list[int] = Field(description="number of samples per bin, ece_bins values")


class ClusteringReport(Block):
    """Metrics of one soft clustering (base or refined) on all N images; label metrics null without labels."""

    num_samples: int = Field(description="number of images evaluated (N)")
    mean_confidence: Fraction = Field(
        description="mean over images of the max cluster probability, in [0, 1]"
    )
    cluster_sizes: list[int] = Field(description="images per cluster (argmax), K values")
    confidence_histogram: ConfidenceHistogram = Field(description="label-free histogram of confidences")
    acc: Fraction = Field(
        description="clustering accuracy after Hungarian matching of clusters to classes, in [0, 1]"
    )
    nmi: Fraction = Field(description="normalised mutual information with the labels, in [0, 1]")
    ari: Fraction = Field(description="adjusted Rand index with the labels, in [-1, 1]")
    ece: Fraction = Field(
        description="expected calibration error (RUC Eq. 20), in [0, 1]: bin-weighted |accuracy - confidence|"
    )
    reliability: list[ReliabilityBin] | None = Field(
        description="reliability diagram bins; null without labels"
    )
    confusion: list[list[int]] | None = Field(
        description="counts, rows = true classes, columns = classes via the Hungarian map plus a last column "
        "for clusters without a class partner; null without labels"
    )
    mapping: list[int] | None = Field(
        description="cluster -> class of the Hungarian matching (-1 unmatched), K values"
    )
    num_classes: int | None = Field(description="number of distinct labels; null without labels")
    many_to_one_acc: Fraction = Field(
        description="accuracy when each cluster takes its majority class, in [0, 1]; >= acc; "
        "the figure for K > classes"
    )
    unavailable_reason: str | None = Field(
        description="why the label metrics are null (e.g. the dataset has no labels)"
    )


class CleanSetSummary(Block):
    """One clean set (the initial one RUC starts from, or the final one after refurbishing)."""

    size: int = Field(description="number of images in the clean set")
    fraction: float = Field(description="size / N, in [0, 1]")
    per_cluster: list[int] = Field(description="clean images per pseudo-label cluster, K values")
    precision: Fraction = Field(
        description="share of clean images whose mapped pseudo-label is their class, in [0, 1]"
    )
    recall: Fraction = Field(
        description="share of correctly pseudo-labelled images that are clean, in [0, 1]"
    )
    f1: Fraction = Field(description="harmonic mean of precision and recall, in [0, 1]")
    correct_total: int | None = Field(
        default=None, description="images whose mapped pseudo-label is their class (labels only)"
    )
    unavailable_reason: str | None = Field(description="why precision/recall/f1 are null")


class AutoDecisionInputs(Block):
    """The label-free inputs of the ``auto`` clean-set rule."""

    confidence_threshold: float = Field(description="tau1: confidence above which a sample is confident")
    knn_k: int | None = Field(description="neighbours of the kNN test; null without an embedding")
    min_fraction: float = Field(description="share of a cluster that must pass hybrid for hybrid to be used")
    cluster_fraction: float = Field(description="share of a cluster kept by rank when hybrid is too small")
    mean_confidence: Fraction = Field(description="mean max probability of the base, in [0, 1]")
    fraction_above_threshold: Fraction = Field(description="share of images with confidence > tau1")
    hybrid_fraction: Fraction = Field(description="share of images passing both the confidence and kNN tests")
    metric_fraction: Fraction = Field(
        description="share of images whose kNN majority agrees with their cluster"
    )
    mean_knn_agreement: Fraction = Field(description="mean share of neighbours sharing the image's cluster")


class CleanSetDecision(Block):
    """The strategy's decision details: filled for ``auto``, empty for an explicit strategy."""

    inputs: AutoDecisionInputs | None = Field(default=None, description="the auto rule's inputs")
    clusters_hybrid: list[int] | None = Field(default=None, description="clusters that used the hybrid test")
    clusters_ranked: list[int] | None = Field(
        default=None, description="clusters that kept their best-ranked members"
    )


class CleanSetBlock(Block):
    """What was selected as clean and why, the initial and the final clean set (of the best run)."""

    strategy: str = Field(description="refine.strategy as asked: metric, confidence, hybrid or auto")
    selected: str = Field(description="the selection actually used (for auto: hybrid, ranked or mixed)")
    reason: str = Field(description="one sentence saying why")
    decision: CleanSetDecision = Field(description="the strategy's inputs and per-cluster branches")
    knn_k: int | None = Field(description="neighbours of the kNN test used; null for the confidence strategy")
    confidence_threshold: float | None = Field(description="tau1 used; null for the metric strategy")
    selected_size: int = Field(description="images the strategy chose, before the per-cluster fallback")
    fallback: list[str] = Field(
        description="notes of the per-cluster fallback (>= 1 clean image per cluster)"
    )
    initial: CleanSetSummary = Field(description="the clean set RUC starts from")
    final: CleanSetSummary = Field(description="the clean set after the last epoch's refurbishing")


class AttackResult(Block):
    """One attack at one eps."""

    kind: Literal["fgsm", "bim"] = Field(description="attack: fgsm (one step) or bim (iterated)")
    eps: float = Field(
        description="L-infinity budget: [0, 1] pixel units for images (4/255 = 0.0157); in feature space "
        "a multiple of the report's eps_scale"
    )
    steps: int | None = Field(description="BIM iterations; null for fgsm")
    accuracy: Fraction = Field(
        description="mapped accuracy on the attacked images, in [0, 1]; null without labels"
    )
    stability: Fraction = Field(
        description="share of images whose cluster the attack leaves unchanged, in [0, 1]"
    )


class RobustnessReport(Block):
    """Robustness of one model on the attack subset."""

    num_samples: int = Field(description="images attacked")
    target: Literal["true_label", "clean_prediction"] = Field(
        description="what the attack pushes away from: the true class (labels) or the clean prediction"
    )
    clean_accuracy: Fraction = Field(
        description="mapped accuracy without attack, in [0, 1]; null without labels"
    )
    unavailable_reason: str | None = Field(description="why accuracies are null")
    space: Literal["pixels", "features"] | None = Field(
        default=None,
        description="where the attacks perturb: pixels (clipped to [0, 1]) or, for a feature job, the "
        "feature vectors (no box, only the eps-ball)",
    )
    eps_scale: float | None = Field(
        default=None,
        description="features: the absolute L-infinity radius is eps x eps_scale, the features' mean "
        "per-dimension standard deviation; null for pixels",
    )
    attacks: list[AttackResult] = Field(description="one entry per attack and eps, in spec order")


class RobustnessBlock(Block):
    """Base and refined models attacked on the same subset."""

    num_samples: int = Field(
        description="images in the attack subset (evaluate.attack_max_samples, at most N)"
    )
    base: RobustnessReport = Field(description="the base clustering network")
    refined: RobustnessReport = Field(description="the refined ensemble of the best run")


class Agreement(Block):
    """Agreement of the refined assignments with the base's."""

    aligned: float = Field(description="share equal after the Hungarian map refined -> base, in [0, 1]")
    raw: float = Field(description="share equal as numbered, in [0, 1]")
    mapping: list[int] = Field(description="refined cluster -> base cluster (-1 unmatched), K values")


class CollapseFigures(Block):
    """The label-free collapse figures."""

    agreement: Fraction = Field(description="aligned agreement with the base, in [0, 1]")
    normalised_confidence: Fraction = Field(
        description="(mean max prob - 1/K) / (1 - 1/K): 0 uniform, 1 one-hot"
    )
    new_empty_clusters: int = Field(description="clusters with base members that the refinement leaves empty")
    merged_clusters: int = Field(description="refined clusters receiving the majority of 2+ base clusters")
    size_entropy_ratio: Fraction = Field(
        description="entropy of refined cluster sizes / base's; 0 = one cluster"
    )


class CollapseSign(Block):
    """A collapse sign that fired."""

    sign: str = Field(description="the figure's name")
    value: float = Field(description="its value")
    bound: float = Field(description="the bound it crossed")
    message: str = Field(description="one sentence for the client")


class Collapse(Block):
    """Warning signs that a refinement collapsed (no labels read)."""

    figures: CollapseFigures = Field(description="the figures")
    bounds: dict[str, float] = Field(description="figure name -> bound")
    fired: list[CollapseSign] = Field(description="signs that fired")
    suspected: bool = Field(description="true when any sign fired")
    returned: str | None = Field(
        default=None, description="what the job returns when a collapse is suspected"
    )
