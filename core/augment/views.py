"""The two views RUC trains on, by recipe: ``paper`` (the paper's text) or ``reference`` (the authors' code).

See ``core.spec.refine`` (the ``augmentation`` field) for what each recipe does and how they differ.
"""

from __future__ import annotations

from typing import get_args

import torch

from core.augment.reference import reference_strong, reference_weak
from core.augment.strong import strong_augment
from core.augment.weak import weak_augment
from core.errors import CoreInputError
from core.spec.refine import AugmentationRecipe

RECIPES: tuple[AugmentationRecipe, ...] = get_args(AugmentationRecipe)


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise CoreInputError(
            "recipe", f"unknown augmentation recipe {recipe!r}; choose one of {', '.join(RECIPES)}"
        )


def strong_view(
    x: torch.Tensor, *, recipe: AugmentationRecipe, n: int, m: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The strong view phi_A of images x (B, C, H, W) float in [0, 1], C in {1, 3}.

    paper: RandAugment(n, m) over Table 4; reference: crop + flip + RandAugmentMC(n, m) + Cutout.
    Returns a new tensor of x's shape, dtype and device, in [0, 1]; every sample draws its own
    parameters, and the result is a function of x and the generator's state (global RNG if None).
    """
    _check_recipe(recipe)
    if recipe == "reference":
        return reference_strong(x, n=n, m=m, generator=generator)
    return strong_augment(x, n=n, m=m, generator=generator)


def weak_view(
    x: torch.Tensor, *, recipe: AugmentationRecipe, generator: torch.Generator | None
) -> torch.Tensor:
    """The weak view phi_a of images x (B, C, H, W) float in [0, 1], C in {1, 3}.

    paper: reflect-padded random crop (1/8 of the side) + flip; reference: RandomResizedCrop(0.2-1)
    + flip. Same shape, dtype and device out; deterministic given the generator.
    """
    _check_recipe(recipe)
    if recipe == "reference":
        return reference_weak(x, generator=generator)
    return weak_augment(x, generator=generator)
