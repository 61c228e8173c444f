from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from api.schemas.common import PublicModel
from service.client_errors import public_reason


class DatasetPublic(PublicModel):
    object: Literal["dataset"] = "dataset"
    id: str = Field(examples=["ds_01jd5x3k2m8q9r7t6v5w4x3y2z"])
    filename: str = Field(examples=["cifar10-train.npz"])
    size: int = Field(description="bytes")
    sha256: str
    status: Literal["validating", "ready", "invalid"]
    reason: Annotated[str | None, AfterValidator(public_reason)] = Field(
        default=None, description="why the dataset is invalid"
    )
    facts: dict[str, Any] | None = Field(
        default=None,
        description="count, height, width, channels (null without images), has_labels, label_count, "
        "has_assignments, has_images, feature_spaces (name -> dimension D of each precomputed feature "
        "array: 'default' for 'features', 'clip' for 'features_clip')",
        examples=[
            {"count": 50000, "height": 32, "width": 32, "channels": 3, "has_labels": True, "label_count": 10}
        ],
    )
    created_at: datetime
    updated_at: datetime


class DatasetsPublic(PublicModel):
    object: Literal["list"] = "list"
    data: list[DatasetPublic]
    has_more: bool
    next_after: str | None = Field(default=None, description="pass as `after` to get the next page")
