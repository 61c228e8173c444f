"""Checkpoint rows, always scoped by owner."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.db.crud.pagination import page_desc
from api.db.models import Checkpoint, Job, is_valid_id, utcnow


def create_checkpoint(
    session: Session, *, checkpoint_id: str, owner_id: str, filename: str, size: int, sha256: str, path: str
) -> Checkpoint:
    now = utcnow()
    row = Checkpoint(
        id=checkpoint_id,
        owner_id=owner_id,
        filename=filename,
        size=size,
        sha256=sha256,
        path=path,
        status="validating",
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_checkpoint(session: Session, owner_id: str, checkpoint_id: str) -> Checkpoint | None:
    if not is_valid_id(checkpoint_id):
        return None
    return session.scalar(
        select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.owner_id == owner_id)
    )


def list_checkpoints(
    session: Session, owner_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[Sequence[Checkpoint], bool]:
    stmt = select(Checkpoint).where(Checkpoint.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(Checkpoint.status == status)
    return page_desc(session, stmt, Checkpoint.id, after=after, limit=limit)


def checkpoint_in_use(session: Session, owner_id: str, checkpoint_id: str) -> bool:
    """True when a queued or running job of the owner names the checkpoint in its spec.

    The reference lives inside the spec JSON, which SQLite and Postgres query differently; the owner's
    unfinished jobs are few, so they are checked here instead.
    """
    specs = session.scalars(
        select(Job.spec).where(Job.owner_id == owner_id, Job.status.in_(("queued", "running")))
    )
    for spec in specs:
        base = (spec or {}).get("base") or {}
        if checkpoint_id in (base.get("embedding_checkpoint_id"), base.get("clustering_checkpoint_id")):
            return True
    return False


def delete_checkpoint(session: Session, checkpoint_id: str) -> None:
    session.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))
    session.flush()
