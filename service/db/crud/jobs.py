"""The API's side of jobs: create (idempotent), read, list, cancel, delete, and the read-only views of
what the worker writes (events, metrics, artifacts). The worker's writes live in ``job_runs``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.db.crud.pagination import page_asc, page_desc
from service.db.models import Artifact, Job, JobEvent, JobMetric, Prediction, is_valid_id, utcnow


def create_job(
    session: Session,
    *,
    job_id: str,
    owner_id: str,
    dataset_id: str,
    spec: dict[str, Any],
    total_epochs: int,
    max_attempts: int,
    idempotency_key: str | None,
    request_hash: str,
) -> Job:
    """Insert a queued job. Raises IntegrityError on a concurrent insert with the same idempotency key."""
    now = utcnow()
    row = Job(
        id=job_id,
        owner_id=owner_id,
        dataset_id=dataset_id,
        spec=spec,
        status="queued",
        stage=None,
        progress=0.0,
        epoch=None,
        total_epochs=total_epochs,
        attempts=0,
        max_attempts=max_attempts,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_job(session: Session, owner_id: str, job_id: str) -> Job | None:
    if not is_valid_id(job_id):
        return None
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))


def get_job_by_idempotency_key(session: Session, owner_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


def list_jobs(
    session: Session, owner_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[Sequence[Job], bool]:
    stmt = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return page_desc(session, stmt, Job.id, after=after, limit=limit)


def add_event(
    session: Session, job_id: str, level: str, message: str, data: dict[str, Any] | None = None
) -> JobEvent:
    row = JobEvent(job_id=job_id, level=level, message=message, data=data, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def requeue_unsent(session: Session, job_id: str, *, stored_error: str) -> bool:
    """failed -> queued for a job that failed only because its message never reached the broker.

    Conditional on the exact error text and on no attempt having run, so of several concurrent
    retries exactly one re-queues (and enqueues) the job.
    """
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "failed", Job.attempts == 0, Job.error == stored_error)
        .values(status="queued", error=None, finished_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def cancel_queued(session: Session, job_id: str) -> bool:
    """queued -> cancelled in one conditional UPDATE, so a worker claiming the job at the same moment
    either sees 'cancelled' or wins (then the caller falls back to ``request_cancel``)."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def request_cancel(session: Session, job_id: str) -> bool:
    """Flag a running job; the worker checks the flag between batches and stops within an epoch."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested=True, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def delete_job_unless_running(session: Session, job_id: str) -> bool:
    """Delete a job that is not running (events, metrics, artifact and prediction rows cascade); False
    otherwise."""
    # SQLite enforces ON DELETE CASCADE only with the foreign_keys pragma; delete children explicitly so
    # the outcome never depends on a connection setting.
    if session.scalar(select(Job.status).where(Job.id == job_id)) in (None, "running"):
        return False
    res = session.execute(
        delete(Job)
        .where(Job.id == job_id, Job.status != "running")
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for model in (JobEvent, JobMetric, Artifact, Prediction):
        session.execute(delete(model).where(model.job_id == job_id))
    session.flush()
    return True


def list_events(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> tuple[Sequence[JobEvent], bool]:
    return page_asc(
        session, select(JobEvent).where(JobEvent.job_id == job_id), JobEvent.id, after=after, limit=limit
    )


def list_metrics(session: Session, job_id: str) -> Sequence[JobMetric]:
    return session.scalars(
        select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.epoch)
    ).all()


def list_metrics_after(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> tuple[Sequence[JobMetric], bool]:
    """Epoch rows in write order after row id ``after`` (a re-run epoch is a new row, so it comes again)."""
    return page_asc(
        session, select(JobMetric).where(JobMetric.job_id == job_id), JobMetric.id, after=after, limit=limit
    )


def list_artifacts(session: Session, job_id: str) -> Sequence[Artifact]:
    return session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).all()


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def count_by_status(session: Session) -> dict[str, int]:
    """Jobs per status over all owners (for /metrics)."""
    return {s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status)).all()}
