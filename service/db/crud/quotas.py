"""Per-owner usage, computed from the tables themselves (no counters to keep in step)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Artifact, Checkpoint, Dataset, Job

ACTIVE_STATUSES = ("queued", "running")


def count_active_jobs(session: Session, owner_id: str) -> int:
    """Queued + running jobs of ``owner_id``."""
    stmt = (
        select(func.count()).select_from(Job).where(Job.owner_id == owner_id, Job.status.in_(ACTIVE_STATUSES))
    )
    return int(session.scalar(stmt) or 0)


def stored_bytes(session: Session, owner_id: str) -> int:
    """Bytes of the owner's datasets, checkpoints (any status: their files are kept) and artifacts."""
    total = 0
    for model in (Dataset, Checkpoint):
        total += int(
            session.scalar(select(func.coalesce(func.sum(model.size), 0)).where(model.owner_id == owner_id))
            or 0
        )
    artifacts = (
        select(func.coalesce(func.sum(Artifact.size), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.owner_id == owner_id)
    )
    return total + int(session.scalar(artifacts) or 0)


def uploads_since(session: Session, owner_id: str, since: datetime) -> list[datetime]:
    """Creation times of the owner's dataset and checkpoint uploads after ``since``, oldest first."""
    times: list[datetime] = []
    for model in (Dataset, Checkpoint):
        times += session.scalars(
            select(model.created_at).where(model.owner_id == owner_id, model.created_at > since)
        ).all()
    return sorted(times)
