from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from api.schemas.common import PublicModel
from service.client_errors import public_reason


class CheckpointPublic(PublicModel):
    object: Literal["checkpoint"] = "checkpoint"
    id: str = Field(examples=["ck_01jd5x3k2m8q9r7t6v5w4x3y2z"])
    filename: str
    size: int
    sha256: str
    status: Literal["validating", "ready", "invalid"]
    reason: Annotated[str | None, AfterValidator(public_reason)] = None
    kind: Literal["clustering", "embedding"] | None = Field(default=None, description="filled by validation")
    info: dict[str, Any] | None = Field(
        default=None,
        description="backbone, backbone_source (keys, metadata, upload, or image_size: the job picks "
        "resnet18_stl for 96-111 px images, resnet18_cifar otherwise), backbone_candidates, num_clusters, "
        "nheads, head, in_channels, features_dim, normalisation (the stated one, or null: the job's "
        "dataset statistics), stated (the upload's query fields as given)",
    )
    created_at: datetime
    updated_at: datetime


class CheckpointsPublic(PublicModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPublic]
    has_more: bool
    next_after: str | None = None
