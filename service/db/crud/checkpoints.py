"""Checkpoint rows, always scoped by owner."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.crud.owned_uploads import create_upload, delete_row, get_owned, list_owned
from service.db.models import Checkpoint, Job


def create_checkpoint(
    session: Session, *, checkpoint_id: str, owner_id: str, filename: str, size: int, sha256: str, path: str
) -> Checkpoint:
    return create_upload(
        session,
        Checkpoint,
        row_id=checkpoint_id,
        owner_id=owner_id,
        filename=filename,
        size=size,
        sha256=sha256,
        path=path,
    )


def get_checkpoint(session: Session, owner_id: str, checkpoint_id: str) -> Checkpoint | None:
    return get_owned(session, Checkpoint, owner_id, checkpoint_id)


def list_checkpoints(
    session: Session, owner_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[Sequence[Checkpoint], bool]:
    return list_owned(session, Checkpoint, owner_id, status=status, after=after, limit=limit)


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
    delete_row(session, Checkpoint, checkpoint_id)
