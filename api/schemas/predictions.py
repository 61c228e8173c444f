from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import PublicModel, upload_request_body
from service.client_errors import public_error
from service.db.models import ID_PATTERN, Prediction

PredictionStatus = Literal["queued", "running", "succeeded", "invalid", "failed"]


class PredictionCreate(BaseModel):
    """The JSON form of a prediction request: every image of one of your ``ready`` datasets."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(
        pattern=ID_PATTERN,
        max_length=40,
        description="a ready dataset of yours whose images have the job's height, width and channels "
        "(a feature job: with the job's feature space and D); it stays yours (the prediction never "
        "removes it)",
        examples=["ds_01jd5x7h3b5c9d0e1f2g3h4j5k"],
    )


def prediction_request_body(suffixes: tuple[str, ...]) -> dict[str, Any]:
    """OpenAPI requestBody of ``POST /v1/jobs/{id}/predictions``: the streamed multipart upload (the
    route reads the stream itself) or the JSON ``PredictionCreate``, inlined (no route declares it)."""
    extra = upload_request_body(suffixes)
    schema = PredictionCreate.model_json_schema()
    extra["requestBody"]["content"]["application/json"] = {"schema": schema}
    return extra


class PredictionPublic(PublicModel):
    """Images assigned with a job's refined ensemble; assignments and probabilities once succeeded."""

    object: Literal["prediction"] = "prediction"
    id: str = Field(examples=["pred_01jd5x7h3b5c9d0e1f2g3h4j5k"])
    job_id: str
    status: PredictionStatus = Field(
        description="queued -> running -> succeeded | invalid (the images do not fit the job) | failed"
    )
    count: int | None = Field(default=None, description="images in the request (null until known)")
    dataset_id: str | None = Field(default=None, description="the dataset predicted (null: an uploaded file)")
    error_code: str | None = Field(
        default=None,
        description="invalid: invalid_input; failed: out_of_memory, time_limit_exceeded, worker_lost, "
        "dataset_deleted (the dataset was deleted before it was read), internal_error",
    )
    error: str | None = Field(default=None, description="why it is invalid or failed, for the client")
    assignments: list[int] | None = Field(
        default=None, description="succeeded: the refined cluster of each image, in upload order (N values)"
    )
    probabilities: list[list[float]] | None = Field(
        default=None,
        description="succeeded: the ensemble's probabilities per image (N rows of K), 6 decimals; "
        "assignments are their argmax",
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Prediction) -> PredictionPublic:
        code, message = public_error(row.error)
        result = row.result if row.status == "succeeded" and isinstance(row.result, dict) else {}
        return cls(
            id=row.id,
            job_id=row.job_id,
            status=row.status,  # type: ignore[arg-type]
            count=row.count,
            dataset_id=row.dataset_id,
            error_code=code,
            error=message,
            assignments=result.get("assignments"),
            probabilities=result.get("probabilities"),
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )
