"""Upload flow shared by datasets and checkpoints: stream to storage, insert the row, commit, enqueue."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.files import remove_after_commit
from api.problems import ProblemError
from api.queue import EnqueueError, enqueue
from api.quotas import check_upload_rate, storage_exceeded, storage_left
from api.uploads import StoredUpload, receive_upload
from service.db.crud.checkpoints import create_checkpoint
from service.db.crud.datasets import create_dataset
from service.db.models import Checkpoint, Dataset, new_id
from service.settings import Settings
from service.storage import CHECKPOINT_SUFFIXES, DATASET_SUFFIXES, Storage, upload_dir
from service.task_names import TASK_VALIDATE_CHECKPOINT, TASK_VALIDATE_DATASET

log = logging.getLogger("api.services.uploads")
Row = TypeVar("Row", Dataset, Checkpoint)

_KINDS: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {
    # kind: (id prefix, storage folder, file stem, allowed suffixes, validation task)
    "dataset": ("ds", "datasets", "data", DATASET_SUFFIXES, TASK_VALIDATE_DATASET),
    "checkpoint": ("ck", "checkpoints", "model", CHECKPOINT_SUFFIXES, TASK_VALIDATE_CHECKPOINT),
}


def _insert_commit(session: Session, insert: Callable[[], Row]) -> Row:
    try:
        row = insert()
        session.commit()
        return row
    except BaseException:
        session.rollback()
        raise


def _undo(session: Session, row: Dataset | Checkpoint) -> None:
    session.delete(row)
    session.commit()


async def accept_upload(
    request: Request,
    session: Session,
    settings: Settings,
    storage: Storage,
    owner_id: str,
    kind: Literal["dataset", "checkpoint"],
    *,
    stated: dict[str, str] | None = None,
) -> Dataset | Checkpoint:
    """Store the upload, insert its ``validating`` row, commit, then enqueue its validation task.

    ``stated``: a checkpoint upload's query fields (backbone, normalisation, mean, std) as given; they
    wait in the row's ``info["stated"]`` for validation, which checks them against the file.

    When the broker refuses the message the row and file are removed and the client gets a 503,
    so no upload sits in ``validating`` forever.
    """
    prefix, folder, stem, suffixes, task = _KINDS[kind]
    row_id = new_id(prefix)
    relative_dir = upload_dir(folder, row_id)
    room = await run_in_threadpool(_check_quotas, session, settings, owner_id)
    # The stored-bytes quota bounds the stream too: the upload stops at the quota, not after it.
    max_bytes = settings.max_upload_bytes if room is None else min(settings.max_upload_bytes, room)
    try:
        stored: StoredUpload = await receive_upload(
            request,
            storage=storage,
            relative_dir=relative_dir,
            stem=stem,
            allowed=suffixes,
            max_bytes=max_bytes,
            chunk_bytes=settings.upload_chunk_bytes,
        )
    except ProblemError as exc:
        if exc.status == 413 and max_bytes < settings.max_upload_bytes:
            raise storage_exceeded(
                settings.quota_stored_bytes, settings.quota_stored_bytes - max_bytes
            ) from exc
        raise
    common = {
        "owner_id": owner_id,
        "filename": stored.filename,
        "size": stored.size,
        "sha256": stored.sha256,
        "path": stored.relative_path,
    }

    def insert() -> Dataset | Checkpoint:
        if kind == "dataset":
            return create_dataset(session, dataset_id=row_id, **common)
        row = create_checkpoint(session, checkpoint_id=row_id, **common)
        if stated:
            row.info = {"stated": stated}
        return row

    try:
        row = await run_in_threadpool(_insert_commit, session, insert)
    except BaseException:
        await run_in_threadpool(remove_after_commit, storage, relative_dir)
        raise
    try:
        await run_in_threadpool(enqueue, settings, task, [row_id])
    except EnqueueError as exc:
        await run_in_threadpool(_undo, session, row)
        await run_in_threadpool(remove_after_commit, storage, relative_dir)
        raise ProblemError(
            503,
            "the task broker is unavailable; the upload was not kept, send it again",
            slug="broker-unavailable",
        ) from exc
    return row


def _check_quotas(session: Session, settings: Settings, owner_id: str) -> int | None:
    """429 over the upload rate or the storage quota; the bytes still allowed (None: no quota)."""
    check_upload_rate(session, settings, owner_id)
    room = storage_left(session, settings, owner_id)
    session.rollback()  # end the read transaction before the (long) stream
    return room
