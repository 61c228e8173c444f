"""Upload checks on queue ``cpu``: ``uploads.validate_dataset``, ``uploads.validate_checkpoint``."""

from __future__ import annotations

from worker.celery_app import app
from worker.task_names import TASK_VALIDATE_CHECKPOINT, TASK_VALIDATE_DATASET


@app.task(name=TASK_VALIDATE_DATASET, ignore_result=True)
def validate_dataset(dataset_id: str) -> str:
    from worker.validation import validate_dataset as check

    return check(dataset_id)


@app.task(name=TASK_VALIDATE_CHECKPOINT, ignore_result=True)
def validate_checkpoint(checkpoint_id: str) -> str:
    from worker.validation import validate_checkpoint as check

    return check(checkpoint_id)
