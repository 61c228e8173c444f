"""Shared pieces of the job spec: the frozen, extra-forbidding base model and the backbone names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

BackboneName = Literal["resnet18_cifar", "resnet18", "resnet34", "resnet50", "small_cnn"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
