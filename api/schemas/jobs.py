from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from api.schemas.common import PublicModel
from core.result_schema import JobResult
from core.spec import JobSpec
from service.client_errors import public_error

JOB_CREATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "minimal": {
        "summary": "k-means base, paper defaults",
        "value": {"dataset_id": "ds_01jd5x3k2m8q9r7t6v5w4x3y2z", "num_clusters": 10},
    },
    "scan_checkpoint": {
        "summary": "Refine an uploaded SCAN model",
        "value": {
            "dataset_id": "ds_01jd5x3k2m8q9r7t6v5w4x3y2z",
            "num_clusters": 10,
            "seed": 1,
            "base": {
                "method": "checkpoint",
                "clustering_checkpoint_id": "ck_01jd5x4a0000000000000000aa",
                "embedding_checkpoint_id": "ck_01jd5x4b0000000000000000bb",
            },
            "refine": {"strategy": "hybrid", "epochs": 50, "lr": 0.01, "knn_k": 100},
            "evaluate": {"ece_bins": 15, "attacks": [{"kind": "fgsm", "eps": [0.0078, 0.0157]}]},
        },
    },
}


class JobCreate(JobSpec):
    """The job spec (core.spec.JobSpec): unknown fields are rejected, defaults are the paper's (A.2)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [e["value"] for e in JOB_CREATE_EXAMPLES.values()]},
    )


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobPublic(PublicModel):
    object: Literal["job"] = "job"
    id: str = Field(examples=["job_01jd5x5c9p2z6mbvyktq65jv87"])
    dataset_id: str
    status: JobStatus
    stage: Literal["loading", "base_clustering", "sampling", "refining", "evaluating", "saving"] | None = None
    progress: float = Field(ge=0, le=1, description="fraction of the whole pipeline done")
    epoch: int | None = Field(default=None, description="last finished RUC epoch")
    total_epochs: int
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: str | None = Field(default=None, description="why the job failed, written for the client")
    error_code: str | None = Field(
        default=None,
        description="stable code of the failure: invalid_input, invalid_spec, out_of_memory, "
        "insufficient_memory, time_limit_exceeded, worker_lost, broker_unavailable, storage_unavailable, "
        "internal_error",
    )
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @model_validator(mode="after")
    def _public_error(self) -> JobPublic:
        # Built from the row, ``error`` is the stored text; it becomes the code and the client message.
        if self.error is not None and self.error_code is None:
            self.error_code, self.error = public_error(self.error)
        return self


class JobsPublic(PublicModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool
    next_after: str | None = None


class EventPublic(PublicModel):
    object: Literal["job.event"] = "job.event"
    id: int
    created_at: datetime
    level: str = Field(examples=["info"])
    message: str = Field(examples=["stage refining"])
    data: dict[str, Any] | None = None


class EventsPublic(PublicModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool
    next_after: int | None = Field(default=None, description="id of the last event; pass as `after` to poll")


class EpochMetricsPublic(PublicModel):
    epoch: int
    metrics: dict[str, Any]
    created_at: datetime


class MetricsPublic(PublicModel):
    object: Literal["job.metrics"] = "job.metrics"
    job_id: str
    epochs: list[int]
    series: dict[str, list[float | None]] = Field(
        description="each numeric metric as a list aligned with `epochs` (null where an epoch lacks it)"
    )
    data: list[EpochMetricsPublic]


class ResultPublic(PublicModel):
    object: Literal["job.result"] = "job.result"
    job_id: str
    result: JobResult = Field(
        description="the job's result.json; every block and field is described in the JobResult schema"
    )


class ArtifactPublic(PublicModel):
    object: Literal["job.artifact"] = "job.artifact"
    name: str = Field(examples=["assignments.csv"])
    size: int
    sha256: str
    media_type: str
    url: str = Field(examples=["/v1/jobs/job_01jd5x5c9p2z6mbvyktq65jv87/artifacts/assignments.csv"])
    created_at: datetime


class ArtifactsPublic(PublicModel):
    object: Literal["list"] = "list"
    data: list[ArtifactPublic]
