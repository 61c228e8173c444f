"""Dataset rows, always scoped by owner: another owner's id reads as absent."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from service.db.crud.owned_uploads import create_upload, delete_row, get_owned, list_owned
from service.db.models import Dataset, Job


def create_dataset(
    session: Session, *, dataset_id: str, owner_id: str, filename: str, size: int, sha256: str, path: str
) -> Dataset:
    return create_upload(
        session,
        Dataset,
        row_id=dataset_id,
        owner_id=owner_id,
        filename=filename,
        size=size,
        sha256=sha256,
        path=path,
    )


def get_dataset(session: Session, owner_id: str, dataset_id: str) -> Dataset | None:
    return get_owned(session, Dataset, owner_id, dataset_id)


def list_datasets(
    session: Session, owner_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[Sequence[Dataset], bool]:
    return list_owned(session, Dataset, owner_id, status=status, after=after, limit=limit)


def dataset_in_use(session: Session, dataset_id: str) -> bool:
    """True while any job (finished or not) references the dataset: jobs keep their input."""
    return bool(session.scalar(select(exists().where(Job.dataset_id == dataset_id))))


def delete_dataset(session: Session, dataset_id: str) -> None:
    delete_row(session, Dataset, dataset_id)
