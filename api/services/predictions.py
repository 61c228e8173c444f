"""Prediction requests: stream the images into the job's folder (or name one of the caller's ``ready``
datasets), check an ``.npz`` header (or the dataset's facts) against the job, insert the row, commit,
enqueue; then a small request waits for its outcome.

Only the header of an ``.npz`` is read here (``core.predict.inputs``, no torch): its image count,
size, channels and dtype (a feature job: its feature array's rows, D and dtype) decide at once
between a 422 naming the field, a 202 (more rows than ``predict_sync_max_images``) and waiting.
Archives are read only by the worker, which records the count it found. A dataset id is checked
from the facts its validation recorded, with the same rules (a 422 naming ``dataset_id``), and its
count decides the same way. Waiting polls the row (one primary-key read per poll, on a short
session) until it ends, until a count over the sync bound appears, or until
``predict_sync_seconds`` have passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.problems import FieldProblem, ProblemError, field_error, not_found
from api.queue import EnqueueError, enqueue
from api.schemas.predictions import PredictionCreate
from api.uploads import StoredUpload, receive_upload
from core.errors import CoreInputError
from core.predict.inputs import (
    JobInputs,
    check_prediction_shape,
    dataset_feature_rows,
    inspect_npz,
    job_inputs,
    require_npz,
)
from service.client_errors import public_error, public_reason
from service.db.crud import datasets as datasets_crud
from service.db.crud import jobs as jobs_crud
from service.db.crud import predictions as crud
from service.db.models import FINISHED_PREDICTION_STATUSES, Dataset, Prediction, new_id
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.storage import DATASET_SUFFIXES, get_storage
from service.task_names import TASK_PREDICT

log = logging.getLogger("api.services.predictions")
# Polls start fast (a small request is done in tens of ms once a worker has it) and slow down.
FIRST_POLL_SECONDS = 0.02
MAX_POLL_SECONDS = 0.25
UNREADABLE_NPZ = "not a readable .npz file (a zip of .npy arrays)"
DATASET_FIELD = "dataset_id"
# The JSON form names a dataset: a few dozen bytes; anything near this cap is not a prediction request.
MAX_JSON_BODY_BYTES = 16 * 1024


def _job_inputs(session: Session, settings: Settings, owner_id: str, job_id: str) -> JobInputs:
    """What the images (or a feature job's rows) must match; 404 for another owner's job, 409 until
    it has succeeded."""
    job = jobs_crud.get_job(session, owner_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status != "succeeded" or job.result is None or crud.ensemble_artifact(session, job_id) is None:
        raise ProblemError(
            409, f"job is {job.status}; predictions need a succeeded job's refined model", slug="not-finished"
        )
    try:
        return job_inputs(
            job.result, max_images=settings.predict_max_images, max_values=settings.predict_max_values
        )
    finally:
        session.rollback()  # end the read transaction before the (long) stream


def _count(name: str, path: Path | None, wanted: JobInputs) -> int | None:
    """The row count of an ``.npz`` (stored as ``name``) from its header (CoreInputError naming the
    field); None for an archive, or for a file in a remote store, whose images only the worker reads."""
    require_npz(name, wanted)
    if path is None or not path.name.endswith(".npz"):
        return None
    try:
        return inspect_npz(path, wanted)
    except CoreInputError:
        raise
    except Exception as exc:  # a reader error core does not name: the file is simply unreadable
        log.info("prediction upload %s unreadable: %s: %s", path.name, type(exc).__name__, exc)
        raise CoreInputError("npz", UNREADABLE_NPZ) from exc


def _insert(
    session: Session, row_id: str, job_id: str, owner_id: str, stored: StoredUpload, count: int | None
) -> Prediction:
    try:
        row = crud.create_prediction(
            session,
            prediction_id=row_id,
            job_id=job_id,
            owner_id=owner_id,
            filename=stored.filename,
            size=stored.size,
            sha256=stored.sha256,
            path=stored.relative_path,
            count=count,
        )
        session.commit()
        return row
    except BaseException:
        session.rollback()
        raise


def _undo(session: Session, row: Prediction) -> None:
    session.delete(row)
    session.commit()


async def _enqueue_or_undo(
    settings: Settings, session: Session, row: Prediction, relative_dir: str | None
) -> None:
    """Send ``predictions.run``; when the broker refuses, remove the row (and the uploaded folder) and
    answer 503."""
    try:
        await run_in_threadpool(enqueue, settings, TASK_PREDICT, [row.id])
    except EnqueueError as exc:
        await run_in_threadpool(_undo, session, row)
        if relative_dir is not None:
            await run_in_threadpool(get_storage(settings).delete_prefix, relative_dir)
        raise ProblemError(
            503,
            "the task broker is unavailable; the request was not kept, send it again",
            slug="broker-unavailable",
        ) from exc


async def read_dataset_request(request: Request) -> PredictionCreate:
    """The JSON body ``{"dataset_id": ...}``; 413 past ``MAX_JSON_BODY_BYTES``, 422 naming the field."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY_BYTES:
            raise field_error(
                413, "body", f"larger than {MAX_JSON_BODY_BYTES} bytes", slug="payload-too-large"
            )
    try:
        return PredictionCreate.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _dataset_count(dataset: Dataset, wanted: JobInputs) -> int:
    """The image (or feature row) count of a ready dataset whose facts fit the job (the inline path's
    rules), else a CoreInputError naming ``dataset_id``; 409 while it is still validating."""
    if dataset.status == "validating":
        raise field_error(
            409, DATASET_FIELD, "dataset is validating; wait until it is ready", slug="not-ready"
        )
    if dataset.status != "ready":
        why = f" ({public_reason(dataset.reason)})" if dataset.reason else ""
        raise CoreInputError(DATASET_FIELD, f"dataset is {dataset.status}{why}")
    facts = dataset.facts or {}
    if wanted.feature_key is not None:
        try:
            return dataset_feature_rows(facts, wanted)
        except CoreInputError as exc:  # the problem names the array, as the worker's would
            raise CoreInputError(DATASET_FIELD, f"{exc.field}: {exc.problem}") from None
    if not facts.get("has_images", True) or facts.get("height") is None:
        raise CoreInputError(DATASET_FIELD, "the dataset has no images (only precomputed features)")
    shape = (int(facts["count"]), int(facts["height"]), int(facts["width"]), int(facts["channels"]))
    try:
        return check_prediction_shape(shape, expected=wanted.image_shape, max_images=wanted.max_images)
    except CoreInputError as exc:
        raise CoreInputError(DATASET_FIELD, f"its {exc.problem}") from None


def _insert_dataset_row(
    session: Session, settings: Settings, owner_id: str, job_id: str, dataset_id: str
) -> Prediction:
    wanted = _job_inputs(session, settings, owner_id, job_id)
    dataset = datasets_crud.get_dataset(session, owner_id, dataset_id)
    if dataset is None:
        session.rollback()
        raise not_found("dataset", dataset_id)
    try:
        count = _dataset_count(dataset, wanted)
        row = crud.create_prediction(
            session,
            prediction_id=new_id("pred"),
            job_id=job_id,
            owner_id=owner_id,
            filename=dataset.filename,
            size=dataset.size,
            sha256=dataset.sha256,
            path=dataset.path,
            count=count,
            dataset_id=dataset.id,
        )
        session.commit()
        return row
    except BaseException:
        session.rollback()
        raise


async def accept_dataset_prediction(
    session: Session, settings: Settings, owner_id: str, job_id: str, body: PredictionCreate
) -> Prediction:
    """Insert the queued row of every image of the caller's dataset, commit, enqueue. 404 for a dataset
    that is not theirs, 409 while it validates, 422 naming ``dataset_id`` when it cannot fit the job."""
    try:
        row = await run_in_threadpool(
            _insert_dataset_row, session, settings, owner_id, job_id, body.dataset_id
        )
    except CoreInputError as exc:
        raise field_error(422, exc.field, exc.problem, slug="validation-error") from exc
    await _enqueue_or_undo(settings, session, row, None)
    return row


async def accept_prediction(
    request: Request, session: Session, settings: Settings, owner_id: str, job_id: str
) -> Prediction:
    """Store the images, check what can be checked without the data, insert the queued row, commit,
    enqueue ``predictions.run``. 422 naming the field for images that cannot fit the job; 503 (row and
    file removed) when the broker refuses the message."""
    wanted = await run_in_threadpool(_job_inputs, session, settings, owner_id, job_id)
    row_id = new_id("pred")
    relative_dir = f"jobs/{job_id}/predictions/{row_id}"
    storage = get_storage(settings)
    stored = await receive_upload(
        request,
        storage=storage,
        relative_dir=relative_dir,
        stem="images",
        allowed=DATASET_SUFFIXES,
        max_bytes=settings.predict_max_upload_bytes,
        chunk_bytes=settings.upload_chunk_bytes,
    )
    try:
        local = storage.local_path(stored.relative_path)
        count = await run_in_threadpool(_count, Path(stored.relative_path).name, local, wanted)
        row = await run_in_threadpool(_insert, session, row_id, job_id, owner_id, stored, count)
    except CoreInputError as exc:
        await run_in_threadpool(storage.delete_prefix, relative_dir)
        raise field_error(422, exc.field, exc.problem, slug="validation-error") from exc
    except BaseException:
        await run_in_threadpool(storage.delete_prefix, relative_dir)
        raise
    await _enqueue_or_undo(settings, session, row, relative_dir)
    return row


def _read(settings: Settings, prediction_id: str) -> Prediction | None:
    session = get_sessionmaker(settings.database_url)()
    try:
        return session.get(Prediction, prediction_id)
    finally:
        session.close()


def _settled(row: Prediction, sync_max: int) -> bool:
    return row.status in FINISHED_PREDICTION_STATUSES or (row.count is not None and row.count > sync_max)


async def await_outcome(settings: Settings, row: Prediction) -> Prediction:
    """The row once it has ended, or as it is when it is too large to wait for or the wait is over."""
    sync_max = settings.predict_sync_max_images
    deadline = time.monotonic() + settings.predict_sync_seconds
    delay = FIRST_POLL_SECONDS
    while not _settled(row, sync_max):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, MAX_POLL_SECONDS)
        try:
            row = await run_in_threadpool(_read, settings, row.id) or row
        except SQLAlchemyError:  # the request is queued all the same: answer 202, the client polls
            log.warning("prediction %s: database unavailable while waiting; answering 202", row.id)
            break
    return row


def invalid_problem(row: Prediction) -> ProblemError:
    """The 422 of a prediction whose images broke a rule (core's message: ``field: problem``)."""
    _code, message = public_error(row.error)
    field, sep, problem = (message or "").partition(": ")
    if not sep:
        field, problem = "file", message or "the images do not fit the job"
    if row.dataset_id is not None:  # the caller named a dataset, not a field of a file they sent
        field, problem = DATASET_FIELD, f"{field}: {problem}"
    return ProblemError(
        422, f"{field}: {problem}", slug="validation-error", errors=[FieldProblem(field, problem)]
    )
