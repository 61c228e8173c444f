"""Recovery queries: rows that may have lost their broker message, and the claim of re-sending one.

The sweeper in every worker (``worker.recovery``) sends a message *before* it commits the mark, so a
broker that is down leaves the row untouched and eligible for the next sweep; nothing is cleared.
Duplicate messages are harmless: a job's claim and an upload's ``validating`` check decide.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from service.db.clock import db_now
from service.db.crud.job_runs import RUNNABLE_STATUSES, add_event, get_job
from service.db.models import Checkpoint, Dataset, Job


def orphaned_job_ids(session: Session, *, requeue_seconds: float, limit: int = 100) -> list[str]:
    """Jobs that may have no message in the broker and no live worker: send them again.

    * ``running`` with an expired lease (its worker died): at once, the first time after expiry;
    * ``running`` with no lease at all (a state older versions left behind);
    * ``queued`` (the API died between commit and enqueue, or the broker lost its data).

    ``updated_at`` marks the last (re-)enqueue (``mark_requeued``), so a row is sent again at most
    every ``requeue_seconds``: a job that merely waits its turn gets a rare duplicate, which its
    claim drops. Every time is the database's (``db_now``), never the sweeping worker's.
    """
    now, stale = db_now(), db_now(-requeue_seconds)
    expired = and_(
        Job.status == "running",
        Job.lease_expires_at.is_not(None),
        Job.lease_expires_at < now,
        or_(Job.updated_at < Job.lease_expires_at, Job.updated_at < stale),
    )
    leaseless = and_(Job.status == "running", Job.lease_expires_at.is_(None), Job.updated_at < stale)
    waiting = and_(Job.status == "queued", Job.lease_expires_at.is_(None), Job.updated_at < stale)
    return list(
        session.scalars(select(Job.id).where(or_(expired, leaseless, waiting)).order_by(Job.id).limit(limit))
    )


def mark_requeued(session: Session, job_id: str, *, requeue_seconds: float) -> bool:
    """Take the re-enqueue of ``job_id`` (one sweeper wins; the row stays locked until commit).

    The caller sends the message *before* committing: if the broker refuses it, the rollback leaves
    the row as it was and the next sweep tries again.
    """
    now, stale = db_now(), db_now(-requeue_seconds)
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(RUNNABLE_STATUSES),
            or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
            or_(
                Job.updated_at < stale,
                and_(Job.lease_expires_at.is_not(None), Job.updated_at < Job.lease_expires_at),
            ),
        )
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return False
    job = get_job(session, job_id)
    message = (
        "worker lost (lease expired); job re-enqueued"
        if job is not None and job.status == "running"
        else "job re-enqueued (no worker had claimed it)"
    )
    add_event(session, job_id, "warning", message)
    return True


def orphaned_upload_ids(
    session: Session, model: type[Dataset] | type[Checkpoint], *, requeue_seconds: float, limit: int = 100
) -> list[str]:
    """Uploads still ``validating`` whose last (re-)enqueue is older than ``requeue_seconds``."""
    stale = db_now(-requeue_seconds)
    return list(
        session.scalars(
            select(model.id)
            .where(model.status == "validating", model.updated_at < stale)
            .order_by(model.id)
            .limit(limit)
        )
    )


def mark_upload_requeued(
    session: Session, model: type[Dataset] | type[Checkpoint], upload_id: str, *, requeue_seconds: float
) -> bool:
    """Take the re-enqueue of a validating upload (same protocol as ``mark_requeued``)."""
    res = session.execute(
        update(model)
        .where(
            model.id == upload_id,
            model.status == "validating",
            model.updated_at < db_now(-requeue_seconds),
        )
        .values(updated_at=db_now())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1
