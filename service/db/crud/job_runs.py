"""The worker's side of the database: leases, progress, events, metrics, artifacts, outcomes.

Every write that a running job makes names its ``Lease`` (owner and attempt of the claim) and is
conditional on it (``lease_owner = :owner AND attempts = :attempt AND status = 'running'``), so a
worker that lost its lease (it stalled past ``lease_expires_at`` and another worker claimed the job)
can no longer touch the row, its events, metrics or artifacts. Inserts into other tables first lock
the job row through the same condition (``_guard``). Functions only flush; the worker commits at its
edges (one short transaction per hook call).

Conditional ``UPDATE ... WHERE`` with ``rowcount`` is the claim primitive because it is atomic on both
Postgres (row lock, re-check of the WHERE clause after a concurrent update) and SQLite (one writer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from service.db.clock import db_now
from service.db.models import FINISHED_STATUSES, Artifact, Checkpoint, Dataset, Job, JobEvent, JobMetric

ClaimOutcome = Literal["claimed", "lease_alive", "finished", "cancelled", "missing", "exhausted"]
RUNNABLE_STATUSES = ("queued", "running")


@dataclass(frozen=True)
class Lease:
    """The token of one claim: every write of the run names it, and is refused once it is stale.

    ``owner`` is unique per delivery (host, pid, random suffix) and ``attempt`` is the row's attempt
    counter at claim time, so a later claim (even by the same owner name) makes this token stale.
    """

    job_id: str
    owner: str
    attempt: int


@dataclass(frozen=True)
class Claim:
    """What a delivery of ``jobs.run`` found: ``claimed`` means this worker now owns the job."""

    outcome: ClaimOutcome
    job: Job | None
    detail: str = ""

    @property
    def lease(self) -> Lease:
        if self.outcome != "claimed" or self.job is None or self.job.lease_owner is None:
            raise ValueError(f"no lease: the claim was {self.outcome}")
        return Lease(self.job.id, self.job.lease_owner, self.job.attempts)


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def claim_job(session: Session, job_id: str, *, owner: str, lease_seconds: float) -> Claim:
    """Take the lease of ``job_id`` for ``owner`` if nobody holds a live one; count the attempt.

    A claim succeeds only for a queued/running job whose lease is absent or expired and that has no
    pending cancel. A claim past ``max_attempts`` marks the job failed ("worker lost N times"): a job
    that kills its worker every time (a poison job) ends instead of looping. Expiry is read and
    written on the database's clock (``db_now``), never this worker's.
    """
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(RUNNABLE_STATUSES),
            _lease_lapsed(),
            Job.cancel_requested.is_(False),
        )
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=db_now(lease_seconds),
            heartbeat_at=db_now(),
            attempts=Job.attempts + 1,
            updated_at=db_now(),
            started_at=func.coalesce(Job.started_at, db_now()),
        )
        .execution_options(synchronize_session=False)
    )
    job = get_job(session, job_id)
    if job is None:
        return Claim("missing", None)
    if result.rowcount != 1:
        if job.status in FINISHED_STATUSES:
            return Claim("finished", job, f"job is already {job.status}")
        if job.cancel_requested and _finish_unowned_cancel(session, job_id):
            return Claim("cancelled", get_job(session, job_id), "cancel requested while nobody ran the job")
        return Claim("lease_alive", job, f"lease held by {job.lease_owner} until {job.lease_expires_at}")
    if job.attempts > job.max_attempts:
        lost = job.attempts - 1
        job.status = "failed"
        job.error = f"worker lost {lost} times (max_attempts={job.max_attempts})"
        job.finished_at = job.heartbeat_at  # the database's time of this claim
        job.lease_owner = None
        job.lease_expires_at = None
        add_event(session, job_id, "error", job.error)
        session.flush()
        return Claim("exhausted", job, job.error)
    session.flush()
    return Claim("claimed", job)


def _lease_lapsed() -> Any:
    """Nobody holds the lease: none was taken, or it expired by the database's clock."""
    return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < db_now())


def _finish_unowned_cancel(session: Session, job_id: str) -> bool:
    """A cancel requested while nobody runs the job (queued, or its worker's lease lapsed) ends it here."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(RUNNABLE_STATUSES),
            Job.cancel_requested.is_(True),
            _lease_lapsed(),
        )
        .values(
            status="cancelled",
            finished_at=db_now(),
            lease_owner=None,
            lease_expires_at=None,
            updated_at=db_now(),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    add_event(session, job_id, "info", "cancelled while no worker was running it")
    return True


def _owned(lease: Lease) -> Any:
    return and_(
        Job.id == lease.job_id,
        Job.lease_owner == lease.owner,
        Job.attempts == lease.attempt,
        Job.status == "running",
    )


def _guard(session: Session, lease: Lease) -> bool:
    """Lock the job row if ``lease`` still holds it; the lock lasts until the caller's commit.

    A no-op UPDATE rather than a SELECT: on Postgres it takes the row lock, on SQLite the database
    write lock, so a competing claim waits until this transaction ends. Whatever the caller writes
    after a True is therefore written while the lease held. ``updated_at`` is kept as it is: the
    recovery sweep reads it as the time of the last (re-)enqueue.
    """
    result = session.execute(
        update(Job)
        .where(_owned(lease))
        .values(lease_owner=Job.lease_owner, updated_at=Job.updated_at)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def renew_lease(session: Session, lease: Lease, *, lease_seconds: float) -> bool:
    """Heartbeat: push ``lease_expires_at`` forward. False means the lease is gone (stop working)."""
    result = session.execute(
        update(Job)
        .where(_owned(lease))
        .values(heartbeat_at=db_now(), lease_expires_at=db_now(lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def update_progress(
    session: Session,
    lease: Lease,
    *,
    stage: str | None = None,
    progress: float | None = None,
    epoch: int | None = None,
    total_epochs: int | None = None,
) -> bool:
    """Write whichever of stage / overall progress (0..1) / epoch / total_epochs are given."""
    values: dict[str, Any] = {}
    if stage is not None:
        values["stage"] = stage
    if progress is not None:
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    if epoch is not None:
        values["epoch"] = int(epoch)
    if total_epochs is not None:
        values["total_epochs"] = int(total_epochs)
    if not values:
        return _guard(session, lease)
    result = session.execute(
        update(Job).where(_owned(lease)).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def is_cancel_requested(session: Session, job_id: str) -> bool:
    value = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none()
    return bool(value)


def holds_lease(session: Session, lease: Lease) -> bool:
    return session.execute(select(Job.id).where(_owned(lease))).first() is not None


def add_event(
    session: Session, job_id: str, level: str, message: str, data: dict[str, Any] | None = None
) -> JobEvent:
    """Unconditional insert: only for callers that already decided, in this transaction, to write."""
    event = JobEvent(job_id=job_id, level=level, message=message, data=data)
    session.add(event)
    session.flush()
    return event


def add_run_event(session: Session, lease: Lease, level: str, message: str) -> bool:
    """An event of the running attempt; False (nothing written) when ``lease`` is stale."""
    if not _guard(session, lease):
        return False
    add_event(session, lease.job_id, level, message)
    return True


def add_finished_job_event(session: Session, job_id: str, level: str, message: str) -> bool:
    """An event about a job that has ended (webhook deliveries); no worker runs it any more."""
    status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    if status not in FINISHED_STATUSES:
        return False
    add_event(session, job_id, level, message)
    return True


def list_event_messages(session: Session, job_id: str) -> list[str]:
    return list(
        session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )


def put_epoch_metrics(session: Session, lease: Lease, epoch: int, metrics: dict[str, Any]) -> bool:
    """One row per (job, epoch); a resumed run that repeats an epoch replaces its row.

    False (nothing written) when ``lease`` is stale.
    """
    if not _guard(session, lease):
        return False
    job_id = lease.job_id
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.epoch == epoch))
    session.add(JobMetric(job_id=job_id, epoch=epoch, metrics=metrics))
    session.flush()
    return True


def _put_artifact(
    session: Session, job_id: str, *, name: str, path: str, size: int, sha256: str, media_type: str
) -> Artifact:
    """Register (or replace, on a re-run) the artifact ``name``; ``path`` is relative to storage."""
    session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    artifact = Artifact(job_id=job_id, name=name, path=path, size=size, sha256=sha256, media_type=media_type)
    session.add(artifact)
    session.flush()
    return artifact


def finish_job(
    session: Session,
    lease: Lease,
    *,
    status: Literal["succeeded", "failed", "cancelled"],
    result: dict[str, Any] | None = None,
    error: str | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> bool:
    """End a job ``lease`` holds and publish its artifact rows, in one step.

    False (nothing written, no artifact published) if the lease was lost meanwhile.
    """
    values: dict[str, Any] = {
        "status": status,
        "finished_at": db_now(),
        "updated_at": db_now(),
        "lease_owner": None,
        "lease_expires_at": None,
        "error": error,
    }
    if status == "succeeded":
        values["progress"] = 1.0
    if result is not None:
        values["result"] = result
    if not _guard(session, lease):
        return False
    for described in artifacts or []:
        _put_artifact(session, lease.job_id, **described)
    res = session.execute(
        update(Job).where(_owned(lease)).values(**values).execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


# --- uploads -------------------------------------------------------------------------------------


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id, populate_existing=True)


def get_checkpoint(session: Session, checkpoint_id: str) -> Checkpoint | None:
    return session.get(Checkpoint, checkpoint_id, populate_existing=True)
