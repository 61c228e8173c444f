"""Shared pieces of the job spec: the frozen, extra-forbidding base model, the backbone names and
the input normalisation block."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

BackboneName = Literal["resnet18_cifar", "resnet18_stl", "resnet18", "resnet34", "resnet50", "small_cnn"]

NormalisationPreset = Literal["cifar10", "cifar20", "stl10", "imagenet", "dataset"]
# (mean, std) of [0, 1] RGB pixels that SCAN's configs train each data set with; SCAN's STL-10
# configs use ImageNet's statistics. "dataset" is computed from the job's own images.
NORMALISATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar20": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "stl10": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Images have 1 or 3 channels; a single value applies to every channel.
_STAT_LENGTHS = (1, 3)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NormalisationSpec(_Spec):
    """``(x - mean) / std`` applied to [0, 1] pixels inside every network: a preset, or mean and std.

    Written as a preset name (``"cifar10"``) or an object (``{"preset": "cifar10"}`` or
    ``{"mean": [...], "std": [...]}``). Lists have 1 value or one per channel (3); every value is
    finite, std > 0.
    """

    preset: NormalisationPreset | None = Field(
        default=None,
        description="cifar10, cifar20, stl10 (SCAN trains STL-10 with ImageNet's statistics), imagenet, "
        "or dataset (the job's images' per-channel mean and std)",
    )
    mean: list[float] | None = Field(default=None, description="per-channel mean of [0, 1] pixels")
    std: list[float] | None = Field(default=None, description="per-channel std of [0, 1] pixels, > 0")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"preset": data} if isinstance(data, str) else data

    @field_validator("mean", "std")
    @classmethod
    def _values(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if values is None:
            return None
        if len(values) not in _STAT_LENGTHS:
            raise ValueError(f"must have 1 or 3 values (one per channel), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"must be finite numbers, got {values}")
        if info.field_name == "std" and any(v <= 0 for v in values):
            raise ValueError(f"must be > 0, got {values}")
        return values

    @model_validator(mode="after")
    def _complete(self) -> NormalisationSpec:
        given = (self.mean is not None, self.std is not None)
        if self.preset is not None and any(given):
            raise ValueError("give either preset or mean and std, not both")
        if self.preset is None and not all(given):
            raise ValueError("give a preset, or both mean and std")
        return self
