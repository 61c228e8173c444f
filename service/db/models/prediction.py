from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.models.base import Base, UTCDateTime, utcnow

PredictionStatus = Literal["queued", "running", "succeeded", "invalid", "failed"]
PREDICTION_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "invalid", "failed")
FINISHED_PREDICTION_STATUSES: frozenset[str] = frozenset({"succeeded", "invalid", "failed"})


class Prediction(Base):
    """Images assigned with a succeeded job's refined ensemble (``predictions.run`` on queue predict).

    ``queued`` -> ``running`` (each delivery counts an attempt) -> ``succeeded`` (``result`` holds
    the assignments and probabilities) | ``invalid`` (the images do not fit the job: ``error``
    names the field) | ``failed`` (``error``: a stable code and a client message). The uploaded file
    is removed once the prediction has ended; a ``dataset_id`` prediction reads the caller's dataset,
    which stays theirs.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_job_id_id", "job_id", "id"),
        Index("ix_predictions_status_updated_at", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    owner_id: Mapped[str] = mapped_column(String(40), ForeignKey("api_keys.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    filename: Mapped[str] = mapped_column(String(255), doc="client's file name, sanitised; display only")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(
        String(500), doc="the upload (or the dataset's file), relative to Settings.storage_dir"
    )
    dataset_id: Mapped[str | None] = mapped_column(
        String(40), default=None, doc="the caller's dataset predicted (its file is theirs, never removed)"
    )
    count: Mapped[int | None] = mapped_column(
        Integer, default=None, doc="images in the request: from the .npz header, else once read"
    )
    attempts: Mapped[int] = mapped_column(
        Integer, default=0, doc="deliveries started; capped by max_attempts"
    )
    error: Mapped[str | None] = mapped_column(Text, default=None, doc="service.client_errors stored form")
    result: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, default=None, doc="{assignments: [N], probabilities: [N][K]}"
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
