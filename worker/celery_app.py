"""The Celery application, configured from ``service.settings.Settings``.

Delivery guarantees come from the database, not the broker: a job row carries a
lease (see ``service.db.crud.job_runs.claim_job``), so a duplicate or late delivery
is harmless (dropped), and a lost one is re-enqueued by ``worker.recovery``.
The broker settings below only make losses rare:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  after the task returns, so a worker that dies mid-job leaves it unacked and the
  broker hands it out again.
* ``worker_prefetch_multiplier = 1``: a busy GPU worker does not hoard queued
  jobs that an idle worker could start.
* ``visibility_timeout`` (Redis): how long an unacknowledged message stays
  invisible before Redis redelivers it. A job keeps its message unacked for its
  whole run (hours for a 200-epoch RUC run), so a short timeout would redeliver
  every long job while it is still running. We set it far above any job's length;
  fast recovery after a crash comes from the lease sweeper, not from this timer.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from service.settings import Settings, get_settings
from service.task_names import (
    CPU_QUEUE,
    GPU_QUEUE,
    PREDICT_QUEUE,
    TASK_QUEUES,
    TASK_RUN_JOB,
    TASK_VALIDATE_CHECKPOINT,
    TASK_VALIDATE_DATASET,
)
from worker.recovery import install as install_recovery

__all__ = [
    "CPU_QUEUE",
    "GPU_QUEUE",
    "PREDICT_QUEUE",
    "TASK_RUN_JOB",
    "TASK_VALIDATE_CHECKPOINT",
    "TASK_VALIDATE_DATASET",
    "app",
]

# 7 days: longer than any job we accept (2000 epochs cap on the spec); see module doc.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Filesystem broker: its folders (created here); Redis: the visibility timeout (module doc)."""
    if settings.is_filesystem_broker:
        settings.ensure_dirs()
        # The exchange tables (and the remote-control fanout) live in `control_folder`, which kombu
        # otherwise creates relative to the working directory.
        control = settings.broker_dir / "control"
        control.mkdir(parents=True, exist_ok=True)
        return {"control_folder": str(control), **settings.broker_transport_options()}
    return {"visibility_timeout": VISIBILITY_TIMEOUT_S}


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery(
        "ruc_service",
        broker=settings.broker_url,
        include=[
            "worker.tasks.jobs",
            "worker.tasks.uploads",
            "worker.tasks.webhooks",
            "worker.tasks.predictions",
        ],
    )
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[
            Queue(GPU_QUEUE, Exchange(GPU_QUEUE, type="direct"), routing_key=GPU_QUEUE),
            Queue(CPU_QUEUE, Exchange(CPU_QUEUE, type="direct"), routing_key=CPU_QUEUE),
            Queue(PREDICT_QUEUE, Exchange(PREDICT_QUEUE, type="direct"), routing_key=PREDICT_QUEUE),
        ],
        task_default_queue=CPU_QUEUE,
        task_routes={name: {"queue": q, "routing_key": q} for name, q in TASK_QUEUES.items()},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A job may run for hours: no soft/hard time limit kills it; cancel goes through the DB.
        # (A prediction has limits of its own, on its task.)
        task_time_limit=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


app = create_celery()
install_recovery(app)
