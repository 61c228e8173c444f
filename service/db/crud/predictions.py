"""Prediction rows: the API creates and reads them (always through the owning job), the worker starts
and finishes them, the recovery sweep sends stale ones again.

Each delivery of ``predictions.run`` starts an attempt with one conditional ``UPDATE`` (as an upload's
validation does), so a request whose images kill their worker ends ``failed`` after ``max_attempts``
deliveries instead of being redelivered forever; the outcome is written only while the row is
``running``, so of two concurrent deliveries one outcome wins and neither overwrites a final state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.client_errors import WORKER_LOST, format_error
from service.db.clock import db_now
from service.db.models import Artifact, Dataset, Job, Prediction, is_valid_id, utcnow

ENSEMBLE_ARTIFACT = "refined_ensemble.safetensors"
RUNNABLE = ("queued", "running")
StartOutcome = Literal["started", "missing", "decided", "exhausted"]


def create_prediction(
    session: Session,
    *,
    prediction_id: str,
    job_id: str,
    owner_id: str,
    filename: str,
    size: int,
    sha256: str,
    path: str,
    count: int | None,
    dataset_id: str | None = None,
) -> Prediction:
    now = utcnow()
    row = Prediction(
        id=prediction_id,
        job_id=job_id,
        owner_id=owner_id,
        status="queued",
        filename=filename,
        size=size,
        sha256=sha256,
        path=path,
        count=count,
        dataset_id=dataset_id,
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_prediction(session: Session, owner_id: str, job_id: str, prediction_id: str) -> Prediction | None:
    """The owner's prediction of ``job_id``; another owner's or another job's reads as absent."""
    if not (is_valid_id(job_id) and is_valid_id(prediction_id)):
        return None
    return session.scalar(
        select(Prediction).where(
            Prediction.id == prediction_id, Prediction.job_id == job_id, Prediction.owner_id == owner_id
        )
    )


def ensemble_artifact(session: Session, job_id: str) -> Artifact | None:
    return session.scalar(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == ENSEMBLE_ARTIFACT)
    )


@dataclass(frozen=True)
class PredictionStart:
    """outcome: ``started`` (attempt n), ``missing`` (no row), ``decided`` (already final),
    ``exhausted`` (failed now: ``attempt`` earlier deliveries ended without an outcome).

    dataset_id: the caller's dataset the prediction reads (its file is theirs: never removed); path is
    then that dataset's file, or "" once the dataset was deleted (or is no longer ready)."""

    outcome: StartOutcome
    attempt: int = 0
    path: str = ""
    job_result: dict[str, Any] | None = None
    ensemble_path: str | None = None
    ensemble_sha256: str | None = None
    dataset_id: str | None = None


def _input_path(session: Session, row: Prediction) -> str:
    """The file a prediction reads: its upload, or its dataset's file ("" when that dataset is gone)."""
    if row.dataset_id is None:
        return row.path
    dataset = session.get(Dataset, row.dataset_id)
    if dataset is None or dataset.owner_id != row.owner_id or dataset.status != "ready":
        return ""
    return dataset.path


def lost_error(attempts: int) -> str:
    times = "time" if attempts == 1 else "times"
    return format_error(WORKER_LOST, f"the prediction's worker was lost {attempts} {times}")


def start_prediction(session: Session, prediction_id: str, *, max_attempts: int) -> PredictionStart:
    """Count one more attempt of a queued or running prediction, or end it past ``max_attempts``."""
    res = session.execute(
        update(Prediction)
        .where(
            Prediction.id == prediction_id,
            Prediction.status.in_(RUNNABLE),
            Prediction.attempts < max_attempts,
        )
        .values(status="running", attempts=Prediction.attempts + 1, updated_at=db_now())
        .execution_options(synchronize_session=False)
    )
    row = session.get(Prediction, prediction_id, populate_existing=True)
    if row is None:
        return PredictionStart("missing")
    if res.rowcount != 1:  # type: ignore[attr-defined]
        if row.status not in RUNNABLE:
            return PredictionStart("decided", row.attempts)
        finish_prediction(session, prediction_id, status="failed", error=lost_error(row.attempts))
        return PredictionStart("exhausted", row.attempts, row.path, dataset_id=row.dataset_id)
    job = session.get(Job, row.job_id)
    artifact = ensemble_artifact(session, row.job_id)
    return PredictionStart(
        "started",
        row.attempts,
        _input_path(session, row),
        job.result if job is not None else None,
        artifact.path if artifact is not None else None,
        artifact.sha256 if artifact is not None else None,
        row.dataset_id,
    )


def record_count(session: Session, prediction_id: str, count: int) -> None:
    """The image count of a running prediction once its file is read (an archive's is known only then)."""
    session.execute(
        update(Prediction)
        .where(Prediction.id == prediction_id, Prediction.status == "running")
        .values(count=count, updated_at=db_now())
        .execution_options(synchronize_session=False)
    )


def finish_prediction(
    session: Session,
    prediction_id: str,
    *,
    status: Literal["succeeded", "invalid", "failed"],
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Record the outcome while the row is queued or running; False when it had ended already."""
    now = db_now()
    res = session.execute(
        update(Prediction)
        .where(Prediction.id == prediction_id, Prediction.status.in_(RUNNABLE))
        .values(status=status, error=error, result=result, updated_at=now, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def orphaned_prediction_ids(session: Session, *, stale_seconds: float, limit: int = 100) -> list[str]:
    """Queued or running predictions untouched for ``stale_seconds``: their message may be lost."""
    return list(
        session.scalars(
            select(Prediction.id)
            .where(Prediction.status.in_(RUNNABLE), Prediction.updated_at < db_now(-stale_seconds))
            .order_by(Prediction.id)
            .limit(limit)
        )
    )


def mark_prediction_requeued(session: Session, prediction_id: str, *, stale_seconds: float) -> bool:
    """Take the re-enqueue of a stale prediction (one sweeper wins; the send precedes the commit)."""
    res = session.execute(
        update(Prediction)
        .where(
            Prediction.id == prediction_id,
            Prediction.status.in_(RUNNABLE),
            Prediction.updated_at < db_now(-stale_seconds),
        )
        .values(updated_at=db_now())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]
