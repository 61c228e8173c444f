"""Resume files through a remote store, so an attempt on another machine resumes where one stopped.

With the local backend every worker sees the same folder and resumes from hard links
(``worker.artifacts.prepare_work_dir``). With a remote store a worker's work folder is its own
scratch, so ``ResumeSync`` copies the attempt's resume files (core's base cache and RUC epoch
checkpoints, ``core.pipeline.resume_files``) to ``jobs/<id>/attempts/<n>/work/`` after every epoch and
stage change, while the lease holds; ``fetch_resume_files`` gives a later attempt the newest earlier
attempt's copies. Core writes those files by rename between the hooks that call ``ResumeSync``, in the
same thread, so an upload never reads a half-written file. A failed upload costs only resume progress
(logged), never the run.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

from core.hooks import RunHooks
from service.db.crud.job_runs import Lease
from service.storage import Storage, StorageError
from worker.artifacts import work_key

log = logging.getLogger(__name__)


class ResumeSync:
    """Puts the changed resume files of ``work_dir`` into the store (each (size, mtime) once)."""

    def __init__(self, storage: Storage, lease: Lease, work_dir: Path, lost: threading.Event) -> None:
        self.storage = storage
        self.prefix = work_key(lease.job_id, lease.attempt)
        self.work_dir = work_dir
        self.lost = lost
        self.sent: dict[str, tuple[int, int]] = {}

    def __call__(self) -> None:
        from core.pipeline import resume_files

        if self.lost.is_set():
            return
        for rel in resume_files(self.work_dir):
            path = self.work_dir / rel
            try:
                st = path.stat()
            except OSError:
                continue
            key, seen = rel.as_posix(), (st.st_size, st.st_mtime_ns)
            if self.sent.get(key) == seen:
                continue
            try:
                self.storage.put_file(f"{self.prefix}/{key}", path)
            except StorageError as exc:
                log.warning("resume file %s not copied to the store: %s", key, exc)
                continue
            self.sent[key] = seen

    def hooks(self, inner: RunHooks) -> RunHooks:
        """``inner`` with a sync after each finished epoch and at each stage change."""

        def on_epoch(metrics: dict[str, object]) -> None:
            inner.on_epoch(metrics)
            self()

        def on_stage(stage: str) -> None:
            self()
            inner.on_stage(stage)

        return dataclasses.replace(inner, on_epoch=on_epoch, on_stage=on_stage)


def _is_resume_file(rel: str) -> bool:
    from core.pipeline import BASE_CACHE, PREFLIGHT_RECORD, RUC_CHECKPOINT

    return rel in (BASE_CACHE, PREFLIGHT_RECORD) or rel.rsplit("/", 1)[-1] == RUC_CHECKPOINT


def fetch_resume_files(storage: Storage, lease: Lease, target: Path) -> int:
    """Copy the newest earlier attempt's stored resume files into ``target``; returns how many."""
    for attempt in range(lease.attempt - 1, 0, -1):
        prefix = work_key(lease.job_id, attempt)
        try:
            found = [o for o in storage.list(prefix) if _is_resume_file(o.key[len(prefix) + 1 :])]
            for obj in found:
                storage.copy_to(obj.key, target / obj.key[len(prefix) + 1 :])
        except StorageError as exc:  # the attempt starts afresh rather than not at all
            log.warning("job %s: resume files of attempt %d not fetched: %s", lease.job_id, attempt, exc)
            return 0
        if found:
            return len(found)
    return 0
