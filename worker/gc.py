"""Retention: files of ended jobs and invalid uploads that nobody can use any more are removed.

Older than ``Settings.retention_days`` (by ``finished_at`` / ``updated_at``, on the database's clock):

* failed and cancelled jobs: the whole ``storage/jobs/<id>/`` folder (attempt work files, resume
  checkpoints, unpublished artifacts), except any file an artifact row still publishes;
* succeeded jobs: only what the success cleanup left behind after a crash (``attempts/``, the legacy
  ``work/``, unpublished artifact folders); published artifacts stay as long as the job;
* invalid datasets and checkpoints: their ``storage/<kind>/<id>/`` folder (the row and its reason stay).

Rows are never deleted. Run by the worker's recovery sweep (at most hourly) and ``ruc-service gc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, select

from service.db.clock import db_now
from service.db.models import Artifact, Checkpoint, Dataset, Job
from service.db.session import session_scope
from service.settings import Settings
from service.storage import resolve_inside
from worker.artifacts import LEGACY_WORK

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
_UPLOAD_FOLDERS: tuple[tuple[type[Dataset] | type[Checkpoint], str], ...] = (
    (Dataset, "datasets"),
    (Checkpoint, "checkpoints"),
)


@dataclass(frozen=True)
class Removal:
    """One folder removed (or, in a dry run, that would be): path relative to storage, bytes, why."""

    path: str
    bytes: int
    why: str


def collect_garbage(
    settings: Settings, *, retention_days: float | None = None, dry_run: bool = False
) -> list[Removal]:
    """Remove (``dry_run``: only list) what has outlived the retention; 0 days keeps everything."""
    days = settings.retention_days if retention_days is None else retention_days
    if days <= 0:
        return []
    cutoff = db_now(-days * SECONDS_PER_DAY)
    ended = and_(Job.finished_at.is_not(None), Job.finished_at < cutoff)
    with session_scope() as s:
        jobs = s.execute(select(Job.id, Job.status).where(ended).order_by(Job.id)).all()
        artifact_paths = s.scalars(select(Artifact.path).join(Job, Artifact.job_id == Job.id).where(ended))
        published = {str(Path(p).parent) for p in artifact_paths}
        uploads = [
            (folder, upload_id, model.__tablename__)
            for model, folder in _UPLOAD_FOLDERS
            for upload_id in s.scalars(
                select(model.id).where(model.status == "invalid", model.updated_at < cutoff)
            )
        ]
    seen: set[tuple[int, int]] = set()
    out: list[Removal] = []
    for job_id, status in jobs:
        why = f"{status} job, ended over {days:g} days ago"
        for rel in _job_leftovers(settings, job_id, published):
            out += _remove(settings, rel, why, dry_run, seen)
        if not dry_run and status != "succeeded":
            _rmdir_if_empty(settings.storage_dir / "jobs" / job_id)
    for folder, upload_id, table in uploads:
        why = f"invalid {table[:-1]}, marked over {days:g} days ago"
        out += _remove(settings, f"{folder}/{upload_id}", why, dry_run, seen)
    return out


def _job_leftovers(settings: Settings, job_id: str, published: set[str]) -> list[str]:
    """Folders of one ended job that hold nothing published (relative to storage)."""
    root = f"jobs/{job_id}"
    rels = [f"{root}/attempts", f"{root}/{LEGACY_WORK}"]
    artifacts = settings.storage_dir / root / "artifacts"
    if artifacts.is_dir():
        rels += [f"{root}/artifacts/{d.name}" for d in sorted(artifacts.iterdir()) if d.is_dir()]
    return [r for r in rels if r not in published]


def _remove(
    settings: Settings, rel: str, why: str, dry_run: bool, seen: set[tuple[int, int]]
) -> list[Removal]:
    path = resolve_inside(settings.storage_dir, rel)
    if path is None or not path.is_dir():
        return []
    size = _tree_bytes(path, seen)
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)
        log.info("gc: removed %s (%d bytes): %s", rel, size, why)
    return [Removal(rel, size, why)]


def _tree_bytes(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes of the files under ``path``; a file hard-linked from several attempts counts once."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _rmdir_if_empty(path: Path) -> None:
    for folder in (path / "artifacts", path):
        with contextlib.suppress(OSError):  # missing, or still holds something kept
            folder.rmdir()
