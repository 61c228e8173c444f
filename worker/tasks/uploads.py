"""Upload checks on queue ``cpu``: ``uploads.validate_dataset``, ``uploads.validate_checkpoint``.

A check's own failures are outcomes (``invalid`` with a reason); what reaches these tasks is a failure
to start or record one (the database is down, no child could be started). Such a task is retried with
backoff and never returns as done: the row stays ``validating``, and after the retries the recovery
sweep sends it again. A retry after a failed write carries the outcome and only writes it.
"""

from __future__ import annotations

import logging
from typing import Any

from service.task_names import TASK_VALIDATE_CHECKPOINT, TASK_VALIDATE_DATASET
from worker.celery_app import app
from worker.validation_sandbox import Kind

log = logging.getLogger(__name__)

MAX_RETRIES = 5


def _run(task: Any, kind: Kind, upload_id: str, outcome: dict[str, Any] | None) -> str:
    """Validate (or, on a retry after a failed write, only record ``outcome``); retry on failure."""
    from worker.validation import OutcomeNotRecorded, record_outcome, validate_checkpoint, validate_dataset

    try:
        if outcome is not None:
            return record_outcome(kind, upload_id, outcome)
        return (validate_dataset if kind == "dataset" else validate_checkpoint)(upload_id)
    except Exception as exc:
        if isinstance(exc, OutcomeNotRecorded):
            outcome = exc.outcome
        log.warning("%s %s: validation not recorded (%s); retrying", kind, upload_id, type(exc).__name__)
        raise task.retry(
            args=[upload_id],
            kwargs={"outcome": outcome},
            exc=exc,
            countdown=min(60, 2 ** (task.request.retries + 1)),
            max_retries=MAX_RETRIES,
        ) from exc


@app.task(name=TASK_VALIDATE_DATASET, ignore_result=True, bind=True)
def validate_dataset(self: Any, dataset_id: str, outcome: dict[str, Any] | None = None) -> str:
    return _run(self, "dataset", dataset_id, outcome)


@app.task(name=TASK_VALIDATE_CHECKPOINT, ignore_result=True, bind=True)
def validate_checkpoint(self: Any, checkpoint_id: str, outcome: dict[str, Any] | None = None) -> str:
    return _run(self, "checkpoint", checkpoint_id, outcome)
