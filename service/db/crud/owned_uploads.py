"""Queries shared by the two uploaded-file resources (datasets, checkpoints), scoped by owner.

Both tables have the same upload columns; another owner's id reads as absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.crud.pagination import page_desc
from service.db.models import Checkpoint, Dataset, is_valid_id, utcnow

Upload = TypeVar("Upload", Dataset, Checkpoint)


def create_upload(
    session: Session,
    model: type[Upload],
    *,
    row_id: str,
    owner_id: str,
    filename: str,
    size: int,
    sha256: str,
    path: str,
) -> Upload:
    """Insert a row in status ``validating`` (a worker task decides ready/invalid)."""
    now = utcnow()
    row = model(
        id=row_id,
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


def get_owned(session: Session, model: type[Upload], owner_id: str, row_id: str) -> Upload | None:
    if not is_valid_id(row_id):
        return None
    return session.scalar(select(model).where(model.id == row_id, model.owner_id == owner_id))


def list_owned(
    session: Session, model: type[Upload], owner_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[Sequence[Upload], bool]:
    stmt = select(model).where(model.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(model.status == status)
    return page_desc(session, stmt, model.id, after=after, limit=limit)


def delete_row(session: Session, model: type[Upload], row_id: str) -> None:
    session.execute(delete(model).where(model.id == row_id))
    session.flush()
