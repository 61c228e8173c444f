"""Re-enqueue jobs whose worker died, so a killed worker's job resumes within ~``lease_seconds``.

A worker that is SIGKILLed (OOM, node loss) leaves its job ``running`` with a lease that stops being
renewed. The broker alone recovers slowly or not at all (Redis redelivers an unacked message only
after the visibility timeout, which must exceed the longest job; the filesystem transport has
already removed the message). So every worker process sweeps the jobs table at start-up and then
every ``lease_seconds / 2``: an expired lease is cleared atomically (one sweeper wins) and the job id
is sent to the ``gpu`` queue again, where the next free worker claims it and resumes from its
epoch checkpoint.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from api.db import session as db_session
from api.db.crud import job_runs
from api.db.models import utcnow
from api.db.session import session_scope
from api.settings import Settings, get_settings

log = logging.getLogger(__name__)

TASK_RUN_JOB = "jobs.run"
# A queued job that nobody claimed for this long may have lost its message (start-up scan only).
UNCLAIMED_QUEUED_AFTER = timedelta(minutes=1)


def sweep(app: Celery, settings: Settings, *, include_queued: bool = False) -> list[str]:
    """One recovery pass; returns the job ids sent to the broker again."""
    with session_scope() as s:
        ids = job_runs.release_expired_leases(s)
        if include_queued:
            ids += job_runs.unclaimed_queued_jobs(s, older_than=utcnow() - UNCLAIMED_QUEUED_AFTER)
    for job_id in ids:
        app.send_task(TASK_RUN_JOB, args=[job_id])
        log.warning("job %s re-enqueued by the recovery sweep", job_id)
    return ids


class Sweeper:
    """Daemon thread in the worker's main process running ``sweep`` periodically."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.interval = max(1.0, settings.lease_seconds / 2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ruc-recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        # The embedded filesystem broker deletes a message when it is fetched, so a job whose worker
        # died between fetch and claim is only found by looking at queued rows (start-up only: later
        # sweeps would duplicate messages of jobs that are merely waiting their turn).
        first = True
        while True:
            try:
                sweep(self.app, self.settings, include_queued=first and self.settings.is_filesystem_broker)
            except Exception:  # the DB or broker is down: try again next round
                log.exception("recovery sweep failed")
            first = False
            if self._stop.wait(self.interval):
                return


_sweeper: Sweeper | None = None


def forget_inherited_engines() -> None:
    """In a forked pool process: drop the parent's pooled connections without closing them.

    A connection inherited through fork shares its socket with the parent; using it here would
    interleave two processes' traffic, and closing it would end the parent's session on the server.
    ``dispose(close=False)`` (SQLAlchemy's recipe for child processes) just forgets them.
    """
    for engine in list(db_session._engines.values()):
        engine.dispose(close=False)
    db_session._engines.clear()
    db_session._makers.clear()


def install(app: Celery) -> None:
    """Connect the worker signals: fresh DB pools after fork, the sweeper in the main process."""

    @worker_process_init.connect(weak=False)
    def _after_fork(**_kw: Any) -> None:
        forget_inherited_engines()

    @worker_ready.connect(weak=False)
    def _start_sweeper(**_kw: Any) -> None:
        global _sweeper
        _sweeper = Sweeper(app, get_settings())
        _sweeper.start()

    @worker_shutdown.connect(weak=False)
    def _stop_sweeper(**_kw: Any) -> None:
        if _sweeper is not None:
            _sweeper.stop()
