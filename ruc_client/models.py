"""Typed views of the API's public resources. Unknown fields are ignored, so a newer server that adds
fields does not break an older client; ``raw`` keeps the whole document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

UploadStatus = Literal["validating", "ready", "invalid"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
PredictionStatus = Literal["queued", "running", "succeeded", "invalid", "failed"]
FINAL_PREDICTION_STATUSES: frozenset[str] = frozenset({"succeeded", "invalid", "failed"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Dataset(_Model):
    id: str
    filename: str
    size: int = Field(description="bytes")
    sha256: str
    status: UploadStatus
    reason: str | None = None
    facts: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class Checkpoint(_Model):
    id: str
    filename: str
    size: int
    sha256: str
    status: UploadStatus
    reason: str | None = None
    kind: Literal["clustering", "embedding"] | None = None
    info: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class Job(_Model):
    id: str
    dataset_id: str
    status: JobStatus
    stage: str | None = None
    progress: float = Field(description="fraction of the whole pipeline done, 0..1")
    epoch: int | None = None
    total_epochs: int
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: str | None = None
    error_code: str | None = None
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_JOB_STATUSES


class Prediction(_Model):
    """Images assigned with a job's refined model: ``assignments`` (N,) and ``probabilities`` (N, K)
    once ``succeeded``; ``error_code`` and ``error`` when ``invalid`` or ``failed``."""

    id: str
    job_id: str
    status: PredictionStatus
    count: int | None = None
    dataset_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    assignments: list[int] | None = None
    probabilities: list[list[float]] | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_PREDICTION_STATUSES


class Event(_Model):
    id: int
    created_at: datetime
    level: str
    message: str
    data: dict[str, Any] | None = None


class EpochMetrics(_Model):
    epoch: int
    metrics: dict[str, Any]
    created_at: datetime


class Metrics(_Model):
    job_id: str
    epochs: list[int]
    series: dict[str, list[float | None]]
    data: list[EpochMetrics]


class Artifact(_Model):
    name: str
    size: int
    sha256: str
    media_type: str
    url: str
    created_at: datetime


T = TypeVar("T")


class Page(_Model, Generic[T]):
    """One page of a list; pass ``next_after`` as ``after`` for the next (an event id is an int)."""

    data: list[T]
    has_more: bool = False
    next_after: str | int | None = None
