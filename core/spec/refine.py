"""``refine``: RUC retraining (Algorithm 1), defaults from the paper's A.2."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.spec.common import BackboneName, _Spec

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
    "area away and every strong view loses up to a quarter of its pixels to the cutout."
)


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
    augmentation: AugmentationRecipe = Field(default="paper", description=_AUGMENTATION_DOC)
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
