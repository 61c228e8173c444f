"""``webhooks.deliver(job_id, message_id)`` on queue ``cpu``: one attempt per run, retried with backoff."""

from __future__ import annotations

from celery import Task

from service.task_names import TASK_DELIVER_WEBHOOK
from worker.celery_app import app
from worker.webhooks import MAX_ATTEMPTS


@app.task(name=TASK_DELIVER_WEBHOOK, bind=True, ignore_result=True, max_retries=MAX_ATTEMPTS - 1)
def deliver(self: Task, job_id: str, message_id: str) -> str:
    from service.settings import get_settings
    from worker.webhooks import deliver_job_callback

    delay = deliver_job_callback(job_id, message_id, self.request.retries + 1, get_settings())
    if delay is not None:
        raise self.retry(countdown=delay)
    return "done"
