from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.models.base import Base, UTCDateTime, utcnow

CheckpointKind = Literal["clustering", "embedding"]


class Checkpoint(Base):
    """An uploaded model file; ``uploads.validate_checkpoint`` fills status/reason/kind/info."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_owner_id_id", "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40), ForeignKey("api_keys.id"))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500), doc="relative to Settings.storage_dir")
    status: Mapped[str] = mapped_column(String(16), default="validating")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    kind: Mapped[str | None] = mapped_column(String(16), default=None, doc="clustering | embedding")
    info: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, default=None, doc="core CheckpointInfo as a dict"
    )
    validation_attempts: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0", doc="validation runs started; capped by max_attempts"
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
