"""``refine``: RUC retraining (Algorithm 1), defaults from the paper's A.2."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from core.spec.common import BackboneName, _Spec
from core.spec.features import FeatureViewsSpec, InputKind

# The names of core.augment's recipes (core.augment.RECIPES is derived from this).
AugmentationRecipe = Literal["paper", "reference"]

_AUGMENTATION_DOC = (
    "Which augmentation recipe makes the weak and strong views. "
    "paper: as the RUC paper reads (A.2, Table 4): weak = random crop (reflect padding of 1/8 "
    "of the side) + horizontal flip; strong = RandAugment of randaugment_n ops drawn with "
    "replacement from Table 4, each always applied, its parameter uniform over Table 4's range "
    "(randaugment_m = 2; smaller m shrinks the ranges towards the identity), no crop, flip or "
    "cutout. reference: as the authors' public scripts do: weak = RandomResizedCrop(scale 0.2-1) "
    "+ horizontal flip; strong = the same crop and flip + RandAugmentMC (randaugment_n distinct "
    "ops, each applied with p = 0.5 at one fixed strength for randaugment_m = 2, e.g. brightness "
    "factor 0.109, rotation +-41 degrees; needs 2 <= randaugment_m <= 10) + a grey Cutout of half "
    "the image side. The reference views are much harsher: the weak view crops up to 80% of the "
    "area away and every strong view loses up to a quarter of its pixels to the cutout. Default: "
    "paper, which measured better on digits over 3 seeds (bench/ruc_quality.py, 10 epochs: NMI 0.823 "
    "vs 0.795, ECE 0.036 vs 0.051, FGSM accuracy 0.780 vs 0.772; reference was 2 points more accurate)."
)


class RefineSpec(_Spec):
    """RUC retraining (Algorithm 1). Each robust-learning component has a switch for ablations."""

    strategy: Literal["auto", "confidence", "metric", "hybrid"] = Field(
        default="metric",
        description="clean-set selection (section 3.1). metric (default): the kNN majority pseudo-label "
        "in the embedding agrees; confidence: max prob > tau1; hybrid: both (the paper's default). "
        "auto: hybrid for each cluster where at least auto_min_fraction of its members pass it, else the "
        "cluster's auto_cluster_fraction best-ranked kNN-consistent members (core.sampling.auto). Metric "
        "is the default because it does not depend on the base network's calibration: at tau1 = 0.99 an "
        "underconfident base leaves hybrid almost empty, and on digits (bench/ruc_quality.py) RUC on the "
        "metric set beat RUC on hybrid and auto sets at every base quality measured",
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
    knn_k: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="k of the metric strategy. Default: the paper's ratio (k = 100 for 5,000 images per "
        "cluster, i.e. 2% of the mean cluster size N/K), bounded to [10, 100] and to N - 1; the "
        "result's clean_set.knn_k reports the k used",
    )
    epochs: int = Field(default=200, ge=1, le=2000)
    batch_size: int | None = Field(
        default=None,
        ge=2,
        le=4096,
        description="B, clean samples per step (and as many unclean). Default: N/32 rounded to a power of "
        "two within [32, 200]: A.2's 200 from N = 6,400 up; smaller data sets get the steps per epoch "
        "a new head needs (digits, N = 1,797: B = 64, 26 steps per network and epoch instead of 9)",
    )
    lr: float = Field(default=0.01, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    label_smoothing: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="epsilon of Eq. (8); 0 turns it off. It must stay below (K-1)/K, else the pseudo-label "
        "is no longer the largest entry of its target. Default: min(0.2, (K-1)/(K+8)): the pseudo-label "
        "keeps at least 9 times each other class's mass (K = 2: 0.1). A.2's 0.5 assumes 200 epochs and "
        "leaves shorter runs underconfident",
    )
    lambda_u: float = Field(default=25.0, ge=0, description="weight of the unlabeled MixMatch loss, Eq. (10)")
    lambda_u_rampup: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="lambda_u is scaled by clip(epoch / R, 0.1, 1) as in the authors' script, with R this "
        "fraction of refine.epochs (their ramp spans their whole 200-epoch run: 1.0)",
    )
    lambda_u_rampup_epochs: int | None = Field(
        default=None, ge=1, le=100_000, description="absolute R in epochs; overrides lambda_u_rampup"
    )
    sharpen_temperature: float = Field(default=0.5, gt=0, le=10)
    mixup_alpha: float = Field(default=4.0, gt=0)
    weak_augmentations: int = Field(default=2, ge=1, le=8, description="M of Algorithm 1")
    randaugment_n: int = Field(default=2, ge=1, le=5)
    randaugment_m: int = Field(default=2, ge=1, le=30)
    augmentation: AugmentationRecipe = Field(default="paper", description=_AUGMENTATION_DOC)
    refurbish_threshold: float = Field(default=0.9, gt=0, le=1, description="tau2 at epoch 0")
    refurbish_step: float = Field(default=0.02, ge=0, le=1)
    refurbish_every: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="epochs between tau2 steps. Default: a fifth of refine.epochs (A.2's 40 of 200), so "
        "tau2 reaches refurbish_threshold + 4 refurbish_step in the last fifth whatever the run's length",
    )
    refurbish_mode: Literal["epoch", "batch"] = Field(
        default="epoch",
        description="epoch: the paper (end of epoch, more confident network, rising tau2); "
        "batch: the authors' script (inside the batch loop, fixed 0.99, current network)",
    )
    co_training: bool = Field(default=True, description="two networks that refine each other's labels")
    interleave: bool = Field(
        default=False,
        description="co-training only: the two networks step alternately on the same clean and unclean "
        "batches and the same weak views of u, so the label guess q_bar (both networks over the M weak "
        "views, Eq. (13)-(14)) is computed once per pair of steps, halving the forwards without "
        "gradients. Differs from the default sequential passes: network 2's guess uses network 1's "
        "weights from before network 1's step (not after its whole pass), both networks draw one batch "
        "order per epoch, and network 2's co-refinement reads network 1's prediction table of the "
        "previous epoch (both tables are refreshed at the epoch end). Off (default): Algorithm 1 as "
        "the authors run it, network 1's full pass, then network 2's",
    )
    mixmatch: bool = Field(default=True, description="off: drops L_Xhat and L_Uhat (both MixMatch terms)")
    refurbish: bool = Field(default=True, description="co-refurbishing, Eq. (18)-(19)")
    strong_loss: bool = Field(
        default=True, description="L_Xs: smoothed cross-entropy on the strong view of clean samples"
    )
    unlabeled_loss: bool = Field(
        default=True, description="L_Uhat: the unlabeled MixMatch term (off keeps the mixing and L_Xhat)"
    )
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
    input: InputKind = Field(
        default="auto",
        description="what the base network and RUC's two networks read. images: CNN backbones on the "
        "pixels; features: MLP heads on the frozen precomputed features of base.features (Linear(D, "
        "feature_hidden_dim), BatchNorm, ReLU, then a linear head to K), views from feature_views, "
        "attacks in feature space. auto (default): features when the dataset has feature arrays and no "
        "images, else images",
    )
    feature_hidden_dim: int = Field(
        default=512, ge=8, le=8192, description="features: width of the MLP's hidden layer"
    )
    feature_views: FeatureViewsSpec = Field(
        default_factory=FeatureViewsSpec, description="features: the weak and strong views of a vector"
    )
    mixed_precision: bool = Field(
        default=True,
        description="bf16 autocast (with channels_last) on CUDA and on CPUs with native bf16 "
        "(AVX512-BF16/AMX); other CPUs always run float32",
    )

    @model_validator(mode="after")
    def _some_loss(self) -> RefineSpec:
        if not self.strong_loss and not self.mixmatch:
            raise ValueError("strong_loss and mixmatch are both off: no loss term is left to train on")
        if self.augmentation == "reference" and not 2 <= self.randaugment_m <= 10:
            raise ValueError(
                "refine.randaugment_m must be in [2, 10] with augmentation 'reference' (RandAugmentMC draws "
                "its level from 1..m-1 and caps m at 10)"
            )
        return self


def smoothing_bound(num_clusters: int) -> float:
    """Largest epsilon (exclusive) of Eq. (8) that leaves the pseudo-label the largest target entry.

    The pseudo-label keeps 1 - eps and every other class gets eps / (K - 1): 1 - eps > eps / (K - 1)
    exactly when eps < (K - 1) / K.
    """
    return (num_clusters - 1) / num_clusters


def smoothing_problem(eps: float, num_clusters: int) -> str:
    bound = smoothing_bound(num_clusters)
    return (
        f"label_smoothing {eps:g} must be below (K-1)/K = {bound:.4g} for K = {num_clusters}: otherwise "
        "the pseudo-label gets no more target mass than the other clusters"
    )


LABEL_SMOOTHING_DEFAULT = 0.2


def default_label_smoothing(num_clusters: int) -> float:
    """min(0.2, (K-1)/(K+8)): the pseudo-label keeps at least 9 times any other class's target mass.

    A.2's 0.5 is tuned for 200 epochs; within shorter budgets it leaves the ensemble underconfident
    (digits, 10 epochs, 3 seeds: mean confidence 0.64 at accuracy 0.81, ECE 0.16; with 0.2: ECE 0.02-0.04).
    """
    return min(LABEL_SMOOTHING_DEFAULT, (num_clusters - 1) / (num_clusters + 8))


BATCH_SIZE_BOUNDS = (32, 200)  # 200: A.2


def effective_batch_size(batch_size: int | None, *, num_samples: int) -> int:
    """B: the spec's value, else N/32 rounded to a power of two within BATCH_SIZE_BOUNDS."""
    if batch_size is not None:
        return batch_size
    lo, hi = BATCH_SIZE_BOUNDS
    return int(min(max(2 ** round(math.log2(max(num_samples, 1) / 32)), lo), hi))


KNN_K_PAPER_RATIO = 100 / 5000  # A.2: k = 100 on CIFAR-10's 5,000 images per cluster
KNN_K_BOUNDS = (10, 100)


def effective_knn_k(knn_k: int | None, *, num_samples: int, num_clusters: int) -> int:
    """k of the metric strategy: the spec's value, else the paper's ratio of the mean cluster size
    N/K bounded to KNN_K_BOUNDS; never more than N - 1 neighbours exist."""
    if knn_k is None:
        lo, hi = KNN_K_BOUNDS
        knn_k = min(max(round(KNN_K_PAPER_RATIO * num_samples / num_clusters), lo), hi)
    return max(1, min(knn_k, num_samples - 1))
