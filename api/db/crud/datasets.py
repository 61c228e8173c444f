"""Dataset rows, always scoped by owner: another owner's id reads as absent."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from api.db.crud.pagination import page_desc
from api.db.models import Dataset, Job, is_valid_id, utcnow


def create_dataset(
    session: Session, *, dataset_id: str, owner_id: str, filename: str, size: int, sha256: str, path: str
) -> Dataset:
    now = utcnow()
    row = Dataset(
        id=dataset_id,
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


def get_dataset(session: Session, owner_id: str, dataset_id: str) -> Dataset | None:
    if not is_valid_id(dataset_id):
        return None
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id))


def list_datasets(
    session: Session, owner_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[Sequence[Dataset], bool]:
    stmt = select(Dataset).where(Dataset.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(Dataset.status == status)
    return page_desc(session, stmt, Dataset.id, after=after, limit=limit)


def dataset_in_use(session: Session, dataset_id: str) -> bool:
    """True while any job (finished or not) references the dataset: jobs keep their input."""
    return bool(session.scalar(select(exists().where(Job.dataset_id == dataset_id))))


def delete_dataset(session: Session, dataset_id: str) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.flush()
