"""``predictions.run(prediction_id)`` on queue ``predict``.

Celery's soft time limit raises inside the prediction, which records ``failed`` (time limit); the
hard limit a few seconds later kills a child stuck where no exception reaches (native code), and
the redelivery that follows counts towards the prediction's attempts.
"""

from __future__ import annotations

from service.settings import get_settings
from service.task_names import TASK_PREDICT
from worker.celery_app import app

# Seconds between the soft limit (an exception in the task) and the hard one (the child is killed).
HARD_LIMIT_GRACE_SECONDS = 30

_limit = get_settings().predict_time_limit_seconds


@app.task(
    name=TASK_PREDICT,
    ignore_result=True,
    soft_time_limit=_limit,
    time_limit=_limit + HARD_LIMIT_GRACE_SECONDS,
)
def run(prediction_id: str) -> str:
    from worker.predictions import run_prediction_delivery

    return run_prediction_delivery(prediction_id)
