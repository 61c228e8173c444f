"""Send again every job or upload that may have lost its broker message, so nothing waits forever.

Messages get lost in several ways: a worker is SIGKILLed mid-job (its lease stops being renewed; Redis
would redeliver the unacked message only after the visibility timeout, which must exceed the longest
job, and the filesystem transport has already removed it), the API dies between its commit and its
enqueue, or Redis loses its data. So every worker process sweeps the tables at start-up and then every
``lease_seconds / 2`` (``service.db.crud.requeue``): a running job whose lease expired is sent again at once;
a queued job or a validating upload is sent again once nobody has taken it for ``requeue_seconds``, and
a queued or running prediction once it has been left that long and past its time limit.

The sweep never clears a lease and never commits before the broker took the message: the mark is
committed only after ``send_task`` returned, so a broker that is down leaves the row as it was and the
next sweep tries again. Duplicates are harmless: the job's lease claim, and the upload's
``validating`` check, let only one delivery do the work. The same thread runs the retention
(``worker.gc``) at most every ``GC_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from service.db.crud import predictions, requeue
from service.db.models import Checkpoint, Dataset
from service.db.session import reset_after_fork, session_scope
from service.settings import Settings, get_settings
from service.task_names import (
    TASK_PREDICT,
    TASK_QUEUES,
    TASK_RUN_JOB,
    TASK_VALIDATE_CHECKPOINT,
    TASK_VALIDATE_DATASET,
)
from worker.gc import collect_garbage

log = logging.getLogger(__name__)

GC_INTERVAL_SECONDS = 3600.0
# Beyond a prediction's soft time limit: its hard limit (worker.tasks.predictions) plus a margin.
PREDICTION_GRACE_SECONDS = 60.0

_UPLOAD_TASKS: tuple[tuple[type[Dataset] | type[Checkpoint], str], ...] = (
    (Dataset, TASK_VALIDATE_DATASET),
    (Checkpoint, TASK_VALIDATE_CHECKPOINT),
)


def _send(app: Celery, task: str, row_id: str) -> None:
    app.send_task(task, args=[row_id], queue=TASK_QUEUES[task])


def sweep(app: Celery, settings: Settings) -> list[str]:
    """One recovery pass; returns the ids sent to the broker again. Raises when the broker is down."""
    wait = settings.requeue_seconds
    sent: list[str] = []
    with session_scope() as s:
        job_ids = requeue.orphaned_job_ids(s, requeue_seconds=wait)
    for job_id in job_ids:
        # One transaction per row: mark (row locked), send, then commit; a failed send rolls back.
        with session_scope() as s:
            if not requeue.mark_requeued(s, job_id, requeue_seconds=wait):
                continue  # another sweeper took it, or a worker claimed it meanwhile
            _send(app, TASK_RUN_JOB, job_id)
        log.warning("job %s re-enqueued by the recovery sweep", job_id)
        sent.append(job_id)
    for model, task in _UPLOAD_TASKS:
        with session_scope() as s:
            upload_ids = requeue.orphaned_upload_ids(s, model, requeue_seconds=wait)
        for upload_id in upload_ids:
            with session_scope() as s:
                if not requeue.mark_upload_requeued(s, model, upload_id, requeue_seconds=wait):
                    continue
                _send(app, task, upload_id)
            log.warning("%s %s re-enqueued by the recovery sweep", model.__tablename__, upload_id)
            sent.append(upload_id)
    return sent + _sweep_predictions(app, settings)


def _sweep_predictions(app: Celery, settings: Settings) -> list[str]:
    """Predictions nobody finished: a running one is sent again only past its task's hard time limit,
    so a slow prediction that is still running is not duplicated."""
    stale = max(settings.requeue_seconds, settings.predict_time_limit_seconds + PREDICTION_GRACE_SECONDS)
    sent: list[str] = []
    with session_scope() as s:
        ids = predictions.orphaned_prediction_ids(s, stale_seconds=stale)
    for prediction_id in ids:
        with session_scope() as s:
            if not predictions.mark_prediction_requeued(s, prediction_id, stale_seconds=stale):
                continue
            _send(app, TASK_PREDICT, prediction_id)
        log.warning("prediction %s re-enqueued by the recovery sweep", prediction_id)
        sent.append(prediction_id)
    return sent


class Sweeper:
    """Daemon thread in the worker's main process running ``sweep`` periodically."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.interval = max(1.0, settings.lease_seconds / 2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ruc-recovery", daemon=True)
        self._next_gc = 0.0  # monotonic time of the next retention pass: the first sweep runs one

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while True:
            try:
                sweep(self.app, self.settings)
            except Exception:  # the DB or broker is down: nothing was marked; try again next round
                log.exception("recovery sweep failed")
            self._collect_garbage()
            if self._stop.wait(self.interval):
                return

    def _collect_garbage(self) -> None:
        if self.settings.retention_days <= 0 or time.monotonic() < self._next_gc:
            return
        self._next_gc = time.monotonic() + GC_INTERVAL_SECONDS
        try:
            removed = collect_garbage(self.settings)
        except Exception:  # the DB is down: the next interval tries again
            log.exception("retention pass failed")
            return
        if removed:
            log.info("retention: removed %d folders, %d bytes", len(removed), sum(r.bytes for r in removed))


_sweeper: Sweeper | None = None


def install(app: Celery) -> None:
    """Connect the worker signals: fresh DB pools after fork, the sweeper in the main process."""

    @worker_process_init.connect(weak=False)
    def _after_fork(**_kw: Any) -> None:
        reset_after_fork()

    @worker_ready.connect(weak=False)
    def _start_sweeper(**_kw: Any) -> None:
        global _sweeper
        _sweeper = Sweeper(app, get_settings())
        _sweeper.start()

    @worker_shutdown.connect(weak=False)
    def _stop_sweeper(**_kw: Any) -> None:
        if _sweeper is not None:
            _sweeper.stop()
