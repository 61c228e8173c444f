from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.models.base import Base, UTCDateTime, utcnow

UploadStatus = Literal["validating", "ready", "invalid"]
UPLOAD_STATUSES: tuple[str, ...] = ("validating", "ready", "invalid")


class Dataset(Base):
    """An uploaded image dataset; the worker's ``uploads.validate_dataset`` fills status/reason/facts."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_id_id", "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40), ForeignKey("api_keys.id"))
    filename: Mapped[str] = mapped_column(String(255), doc="client's file name, sanitised; display only")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500), doc="relative to Settings.storage_dir")
    status: Mapped[str] = mapped_column(String(16), default="validating")
    reason: Mapped[str | None] = mapped_column(Text, default=None, doc="why it is invalid")
    validation_attempts: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0", doc="validation runs started; capped by max_attempts"
    )
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
