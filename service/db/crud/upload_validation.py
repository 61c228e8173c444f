"""Writes of an upload's validation: start an attempt (counted), renew it, record the outcome.

Each delivery of ``uploads.validate_*`` starts an attempt by one conditional ``UPDATE``; a delivery
that finds ``max_attempts`` attempts already started (each ended without an outcome: its worker died)
records ``invalid`` instead, so a file that kills its worker cannot be redelivered forever, neither
by the broker (``reject_on_worker_lost``) nor by the recovery sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db.models import Checkpoint, Dataset, utcnow

UploadModel = type[Dataset] | type[Checkpoint]
StartOutcome = Literal["started", "missing", "decided", "exhausted"]


@dataclass(frozen=True)
class ValidationStart:
    """outcome: ``started`` (attempt n of the upload), ``missing`` (no row), ``decided`` (status is
    already ready/invalid), ``exhausted`` (marked invalid now: ``attempt`` earlier runs crashed)."""

    outcome: StartOutcome
    status: str | None = None
    attempt: int = 0
    path: str = ""
    info: dict[str, Any] | None = None


def crashed_reason(attempts: int) -> str:
    return f"validation crashed {attempts} time{'s' if attempts != 1 else ''}"


def start_validation(
    session: Session, model: UploadModel, upload_id: str, *, max_attempts: int
) -> ValidationStart:
    """Count one more attempt of a ``validating`` upload, or end it past ``max_attempts``."""
    now = utcnow()
    res = session.execute(
        update(model)
        .where(
            model.id == upload_id,
            model.status == "validating",
            model.validation_attempts < max_attempts,
        )
        .values(validation_attempts=model.validation_attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    row = session.get(model, upload_id, populate_existing=True)
    if row is None:
        return ValidationStart("missing")
    info = row.info if isinstance(row, Checkpoint) else None
    if res.rowcount == 1:
        return ValidationStart("started", row.status, row.validation_attempts, row.path, info)
    if row.status != "validating":
        return ValidationStart("decided", row.status, row.validation_attempts)
    attempts = row.validation_attempts
    finish_validation(session, model, upload_id, ready=False, reason=crashed_reason(attempts))
    return ValidationStart("exhausted", "invalid", attempts)


def renew_validation(session: Session, model: UploadModel, upload_id: str) -> None:
    """Mark a running validation alive, so the recovery sweep does not send it again meanwhile."""
    session.execute(
        update(model)
        .where(model.id == upload_id, model.status == "validating")
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def finish_validation(
    session: Session, model: UploadModel, upload_id: str, *, ready: bool, reason: str | None, **values: Any
) -> bool:
    """Record the outcome (only while the row is ``validating``); ``values``: ``facts`` for a dataset,
    ``kind`` and ``info`` for a checkpoint."""
    res = session.execute(
        update(model)
        .where(model.id == upload_id, model.status == "validating")
        .values(status="ready" if ready else "invalid", reason=reason, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1
