"""The whole job spec: data, K, seed and the base / refine / evaluate blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.spec.base import BaseSpec
from core.spec.common import _Spec
from core.spec.refine import RefineSpec, smoothing_bound, smoothing_problem


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
        eps = self.refine.label_smoothing
        if self.num_clusters is not None and eps is not None and eps >= smoothing_bound(self.num_clusters):
            raise ValidationError.from_exception_data(
                "JobSpec",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "value_error", "{problem}", {"problem": smoothing_problem(eps, self.num_clusters)}
                        ),
                        loc=("refine", "label_smoothing"),
                        input=eps,
                    )
                ],
            )
        return self
