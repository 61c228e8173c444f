"""Upload checks on queue ``cpu``: ``uploads.validate_dataset``, ``uploads.validate_checkpoint``.

A check's own failures are outcomes (``invalid`` with a reason); what reaches these tasks is a failure
to start or record one (the database is down, no child could be started). Such a task is retried with
backoff and never returns as done: the row stays ``validating``, and after the retries the recovery
sweep sends it again.
"""

from __future__ import annotations

from typing import Any

from worker.celery_app import app
from worker.task_names import TASK_VALIDATE_CHECKPOINT, TASK_VALIDATE_DATASET

MAX_RETRIES = 5


def _retry(task: Any, exc: Exception) -> Exception:
    return task.retry(exc=exc, countdown=min(60, 2 ** (task.request.retries + 1)), max_retries=MAX_RETRIES)


@app.task(name=TASK_VALIDATE_DATASET, ignore_result=True, bind=True)
def validate_dataset(self: Any, dataset_id: str) -> str:
    from worker.validation import validate_dataset as check

    try:
        return check(dataset_id)
    except Exception as exc:
        raise _retry(self, exc) from exc


@app.task(name=TASK_VALIDATE_CHECKPOINT, ignore_result=True, bind=True)
def validate_checkpoint(self: Any, checkpoint_id: str) -> str:
    from worker.validation import validate_checkpoint as check

    try:
        return check(checkpoint_id)
    except Exception as exc:
        raise _retry(self, exc) from exc
