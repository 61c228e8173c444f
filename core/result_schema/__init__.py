"""The job result (``result.json``, ``GET /v1/jobs/{id}/result``) as pydantic models.

Pure pydantic, no torch: the worker validates the result it writes with ``JobResult`` and the API
publishes the same models, so the OpenAPI document and the worker's output cannot drift apart.
Fixed-shape blocks forbid unknown keys; fields that later versions add are optional, so results
stored by an older version still validate. Measured floats may be null (json_safe writes NaN as
null); label figures are null when the dataset has no labels.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from core.result_schema.base_info import AutoKInfo, BaseInfo, MethodInfo
from core.result_schema.common import Block
from core.result_schema.quality import (
    Agreement,
    AttackResult,
    CleanSetBlock,
    CleanSetSummary,
    ClusteringReport,
    Collapse,
    ReliabilityBin,
    RobustnessBlock,
    RobustnessReport,
)
from core.result_schema.training import (
    BestRun,
    Effective,
    EpochMetrics,
    Preflight,
    PreflightTry,
    RunEntry,
    SummaryFigure,
)
from core.spec import JobSpec


class DatasetFacts(Block):
    """The dataset the job ran on."""

    count: int = Field(description="number of samples (N): images, or rows of the feature arrays")
    height: int | None = Field(default=None, description="image height, pixels; null without images")
    width: int | None = Field(default=None, description="image width, pixels; null without images")
    channels: int | None = Field(default=None, description="1 (grey) or 3 (RGB); null without images")
    has_labels: bool = Field(description="whether labels were uploaded (evaluation only, never training)")
    label_count: int | None = Field(description="distinct labels; null without labels")
    has_assignments: bool = Field(description="whether base assignments were uploaded (labels method)")
    has_images: bool | None = Field(
        default=None, description="false for a dataset of precomputed features only"
    )
    feature_spaces: dict[str, int] | None = Field(
        default=None,
        description="precomputed feature spaces: name (default for the npz array 'features', clip for "
        "'features_clip') -> dimension D",
    )


class JobResult(Block):
    """Everything a succeeded job reports. ``refined`` and the top-level figures are the best run's."""

    base: ClusteringReport = Field(description="the base clustering's metrics")
    refined: ClusteringReport = Field(description="the refined ensemble's metrics (best run)")
    clean_set: CleanSetBlock = Field(description="the clean set: strategy, decision, initial and final sets")
    robustness: RobustnessBlock = Field(description="FGSM/BIM robustness of base and refined models")
    per_epoch: list[EpochMetrics] = Field(description="one entry per RUC epoch, every run in order")
    agreement: Agreement | None = Field(default=None, description="refined vs base assignments (best run)")
    collapse: Collapse | None = Field(default=None, description="collapse signs of the best run")
    runs: list[RunEntry] | None = Field(default=None, description="one entry per refinement run (repeats)")
    summary: dict[str, SummaryFigure] | None = Field(
        default=None, description="figure name -> mean, std and per-run values over the runs"
    )
    best_run: BestRun | None = Field(default=None, description="which run the job returns and why")
    notes: list[str] = Field(
        description="warnings and notes of the job (fallbacks, collapse, report), in order"
    )
    timings: dict[str, float] = Field(description="stage name -> wall time, seconds")
    device: str = Field(description="torch device the job ran on, e.g. cpu or cuda:0 (rank 0's with several)")
    world_size: int | None = Field(
        default=None, description="processes that trained the job together (1: one device)"
    )
    devices: list[str] | None = Field(
        default=None, description="the device of each rank, rank 0 first (several: data-parallel training)"
    )
    spec: JobSpec = Field(description="the job spec as validated (defaults filled in)")
    dataset: DatasetFacts | None = Field(default=None, description="facts of the dataset")
    base_info: BaseInfo | None = Field(default=None, description="what the base clustering stage did")
    effective: Effective | None = Field(default=None, description="schedule values the best run used")
    preflight: Preflight | None = Field(
        default=None, description="the memory preflight before RUC (absent when the job ran without one)"
    )


def validated_result(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` checked against ``JobResult`` and dumped as JSON types with the keys it had.

    Raises pydantic.ValidationError naming the field when the worker's result drifted from the schema.
    """
    return JobResult.model_validate(result).model_dump(mode="json", by_alias=True, exclude_unset=True)


__all__ = [
    "Agreement",
    "AttackResult",
    "AutoKInfo",
    "BaseInfo",
    "BestRun",
    "CleanSetBlock",
    "CleanSetSummary",
    "ClusteringReport",
    "Collapse",
    "DatasetFacts",
    "Effective",
    "EpochMetrics",
    "JobResult",
    "MethodInfo",
    "Preflight",
    "PreflightTry",
    "ReliabilityBin",
    "RobustnessBlock",
    "RobustnessReport",
    "RunEntry",
    "SummaryFigure",
    "validated_result",
]
