"""The whole job spec: data, K, seed and the base / refine / evaluate blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.spec.base import BaseSpec
from core.spec.common import _Spec
from core.spec.features import feature_conflicts
from core.spec.refine import RefineSpec, smoothing_bound, smoothing_problem


class AttackSpec(_Spec):
    kind: Literal["fgsm", "bim"]
    eps: list[float] = Field(
        default=[2 / 255, 4 / 255, 8 / 255],
        min_length=1,
        max_length=16,
        description="L-inf radii in (0, 1]: pixel scale [0, 1] for images; for a feature job a multiple "
        "of the features' mean per-dimension standard deviation (the result states that scale)",
    )
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


MAX_RUNS = 10


def _field_error(field: str | tuple[str, ...], problem: str, value: object) -> ValidationError:
    """A ValidationError located at ``field`` (a model validator's ValueError names the whole body)."""
    loc = (field,) if isinstance(field, str) else field
    error = PydanticCustomError("value_error", "{problem}", {"problem": problem})
    return ValidationError.from_exception_data(
        "JobSpec", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


class JobSpec(_Spec):
    dataset_id: str = Field(min_length=1, max_length=64)
    num_clusters: int | None = Field(
        default=None, ge=2, le=1000, description="required unless base.auto_k estimates it"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    repeats: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RUNS,
        description="refinement runs with seeds seed, seed+1, ... on one shared base clustering "
        "(default 1); the result reports each run and the mean and std of every figure, the artifacts "
        "come from the best run by a label-free criterion. Not together with seeds.",
    )
    seeds: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_RUNS,
        description="explicit refinement seeds (unique), one run each; the base clustering uses seed. "
        "Not together with repeats.",
    )
    base: BaseSpec = Field(default_factory=BaseSpec)
    refine: RefineSpec = Field(default_factory=RefineSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    callback_url: HttpUrl | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if len(set(v)) != len(v):
            raise ValueError("seeds must not repeat")
        for s in v:
            if not 0 <= s <= 2**31 - 1:
                raise ValueError(f"each seed must be in [0, 2**31 - 1]; got {s}")
        return v

    @model_validator(mode="after")
    def _cluster_count(self) -> JobSpec:
        problem = None
        if self.num_clusters is None and self.base.auto_k is None:
            problem = "num_clusters is required unless base.auto_k is given"
        elif self.num_clusters is not None and self.base.auto_k is not None:
            problem = "give either num_clusters or base.auto_k, not both"
        if problem is not None:
            raise _field_error("num_clusters", problem, self.num_clusters)
        if self.repeats is not None and self.seeds is not None:
            raise _field_error("seeds", "give either repeats or seeds, not both", self.seeds)
        if self.repeats is not None and self.seed + self.repeats - 1 > 2**31 - 1:
            raise _field_error("repeats", "seed + repeats - 1 must be <= 2**31 - 1", self.repeats)
        if self.refine.input == "features":
            problems = feature_conflicts(self)
            if problems:
                loc, problem = problems[0]
                raise _field_error(loc, problem, None)
        eps = self.refine.label_smoothing
        if self.num_clusters is not None and eps is not None and eps >= smoothing_bound(self.num_clusters):
            raise _field_error(("refine", "label_smoothing"), smoothing_problem(eps, self.num_clusters), eps)
        return self

    def refinement_seeds(self) -> list[int]:
        """The seed of each refinement run: ``seeds``, else seed, seed+1, ... (``repeats``, default 1)."""
        if self.seeds is not None:
            return list(self.seeds)
        return [self.seed + i for i in range(self.repeats or 1)]
