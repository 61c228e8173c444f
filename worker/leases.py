"""Who runs a job: the owner name of a delivery and the heartbeat thread that keeps its lease."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from service.db.crud import job_runs
from service.db.crud.job_runs import Lease
from service.db.session import session_scope
from service.settings import Settings

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """Lease owner name: host, pid and a random suffix (a restarted pid is another owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """Renews ``lease`` every ``heartbeat_seconds`` in a daemon thread; ``lost`` is set once it is gone.

    Any other part of the run that finds its lease-conditional write refused sets ``lost`` too, so the
    run stops at the next ``should_stop``.
    """

    def __init__(self, lease: Lease, settings: Settings) -> None:
        self.lease = lease
        self.settings = settings
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{lease.job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.heartbeat_seconds + 5)

    def holds(self, written: bool) -> bool:
        """Note the answer of a lease-conditional write; returns it."""
        if not written and not self.lost.is_set():
            log.warning("job %s: a write was refused; the lease is lost", self.lease.job_id)
            self.lost.set()
        return written

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope() as s:
                    alive = job_runs.renew_lease(s, self.lease, lease_seconds=self.settings.lease_seconds)
            except Exception:  # a DB blip: the lease has slack (lease_seconds > heartbeat_seconds)
                log.exception("heartbeat of job %s failed", self.lease.job_id)
                continue
            if not alive:
                log.warning("job %s: lease lost (another worker owns it or it ended)", self.lease.job_id)
                self.lost.set()
                return
