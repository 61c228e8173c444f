"""``jobs.run(job_id)`` on queue ``gpu``."""

from __future__ import annotations

from service.task_names import TASK_RUN_JOB
from worker.celery_app import app


@app.task(name=TASK_RUN_JOB, ignore_result=True)
def run(job_id: str) -> str:
    from worker.job_runner import run_job_delivery

    return run_job_delivery(job_id)
