"""Retention: files of ended jobs and invalid uploads that nobody can use any more are removed.

Older than ``Settings.retention_days`` (by ``finished_at`` / ``updated_at``, on the database's clock):

* failed and cancelled jobs: the whole ``jobs/<id>/`` folder (attempt work files, resume checkpoints,
  unpublished artifacts), except any folder an artifact row still publishes;
* succeeded jobs: only what the success cleanup left behind after a crash (``attempts/``, the legacy
  ``work/``, unpublished artifact folders); published artifacts stay as long as the job;
* invalid datasets and checkpoints: their ``<kind>/<id>/`` folder (the row and its reason stay).

The rules apply to the store (``service.storage``: a folder or a bucket) and, with a remote store, to
this worker's scratch folder, where its work folders live. Also removed, once untouched for
``ORPHAN_GRACE_SECONDS``: a ``jobs/<id>``, ``datasets/<id>`` or ``checkpoints/<id>`` folder whose row
no longer exists (a delete whose file removal failed, a worker's scratch of a deleted job), and a
scratch copy of an upload no longer being validated (a crashed validation's). Rows are never deleted.
Run by the worker's recovery sweep (at most hourly) and ``ruc-service gc``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from service.db.clock import db_now
from service.db.models import Artifact, Checkpoint, Dataset, Job
from service.db.session import session_scope
from service.settings import Settings
from service.storage import InvalidKey, LocalStorage, ObjectInfo, Storage, get_storage
from worker.artifacts import LEGACY_WORK

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
# An upload's object exists a moment before its row (the row is inserted after the stream ends).
ORPHAN_GRACE_SECONDS = 3600
_UPLOAD_FOLDERS: tuple[tuple[type[Dataset] | type[Checkpoint], str], ...] = (
    (Dataset, "datasets"),
    (Checkpoint, "checkpoints"),
)
_ROW_FOLDERS: tuple[tuple[str, type[Job] | type[Dataset] | type[Checkpoint]], ...] = (
    ("jobs", Job),
    ("datasets", Dataset),
    ("checkpoints", Checkpoint),
)
SCRATCH_LABEL = "scratch:"
# Ids per IN (...) query (SQLite caps bound parameters).
_ID_BATCH = 500


@dataclass(frozen=True)
class Removal:
    """One folder removed (or, in a dry run, that would be): key prefix (``scratch:...`` in a worker's
    scratch folder), bytes, why."""

    path: str
    bytes: int
    why: str


@dataclass(frozen=True)
class _Expired:
    jobs: list[tuple[str, str]]  # (id, status) of jobs ended before the cutoff
    published: set[str]  # artifact folders that rows still publish
    uploads: list[tuple[str, str, str]]  # (folder, id, table) of expired invalid uploads


def collect_garbage(
    settings: Settings, *, retention_days: float | None = None, dry_run: bool = False
) -> list[Removal]:
    """Remove (``dry_run``: only list) what has outlived the retention; 0 days keeps everything."""
    days = settings.retention_days if retention_days is None else retention_days
    if days <= 0:
        return []
    expired = _expired(days)
    stores: list[tuple[str, Storage]] = [("", get_storage(settings))]
    if settings.storage_backend != "local":
        stores.append((SCRATCH_LABEL, LocalStorage(settings.scratch_dir)))
    out: list[Removal] = []
    for label, store in stores:
        for job_id, status in expired.jobs:
            why = f"{status} job, ended over {days:g} days ago"
            for rel in _job_leftovers(store, job_id, expired.published):
                out += _remove(store, label, rel, why, dry_run)
        for folder, upload_id, table in expired.uploads:
            why = f"invalid {table[:-1]}, marked over {days:g} days ago"
            out += _remove(store, label, f"{folder}/{upload_id}", why, dry_run)
        out += _orphans(store, label, dry_run)
    return out


def _expired(days: float) -> _Expired:
    cutoff = db_now(-days * SECONDS_PER_DAY)
    ended = and_(Job.finished_at.is_not(None), Job.finished_at < cutoff)
    with session_scope() as s:
        jobs = [(r[0], r[1]) for r in s.execute(select(Job.id, Job.status).where(ended).order_by(Job.id))]
        artifact_paths = s.scalars(select(Artifact.path).join(Job, Artifact.job_id == Job.id).where(ended))
        published = {p.rsplit("/", 1)[0] for p in artifact_paths}
        uploads = [
            (folder, upload_id, model.__tablename__)
            for model, folder in _UPLOAD_FOLDERS
            for upload_id in s.scalars(
                select(model.id).where(model.status == "invalid", model.updated_at < cutoff)
            )
        ]
    return _Expired(jobs, published, uploads)


def _job_leftovers(store: Storage, job_id: str, published: set[str]) -> list[str]:
    """Folders of one ended job that hold nothing published (key prefixes)."""
    root = f"jobs/{job_id}"
    rels = [f"{root}/attempts", f"{root}/{LEGACY_WORK}"]
    rels += sorted({"/".join(o.key.split("/")[:4]) for o in store.list(f"{root}/artifacts")})
    return [r for r in rels if r not in published]


def _remove(store: Storage, label: str, rel: str, why: str, dry_run: bool) -> list[Removal]:
    try:
        if not store.list(rel):
            return []
    except InvalidKey:
        return []
    size = store.usage(rel)
    if not dry_run:
        store.delete_prefix(rel)
        log.info("gc: removed %s%s (%d bytes): %s", label, rel, size, why)
    return [Removal(f"{label}{rel}", size, why)]


def _orphans(store: Storage, label: str, dry_run: bool) -> list[Removal]:
    """Row folders whose row is gone, and scratch copies of uploads no longer validating."""
    old = time.time() - ORPHAN_GRACE_SECONDS
    out: list[Removal] = []
    for folder, model in _ROW_FOLDERS:
        newest = _newest_by_id(store.list(folder), depth=1)
        gone = set(newest) - _existing(model, list(newest))
        for row_id in sorted(i for i in gone if newest[i] < old):
            out += _remove(store, label, f"{folder}/{row_id}", "its row was deleted", dry_run)
    if label != SCRATCH_LABEL:
        return out
    for kind, upload in (("dataset", Dataset), ("checkpoint", Checkpoint)):
        newest = _newest_by_id(store.list(f"validation/{kind}"), depth=2)
        busy = _existing(upload, list(newest), upload.status == "validating")
        for row_id in sorted(set(newest) - busy):
            out += _remove(store, label, f"validation/{kind}/{row_id}", "its validation ended", dry_run)
    return out


def _existing(model: type[Job] | type[Dataset] | type[Checkpoint], ids: list[str], *where: Any) -> set[str]:
    """The ids among ``ids`` that have a row (meeting ``where``), read in batches."""
    found: set[str] = set()
    with session_scope() as s:
        for i in range(0, len(ids), _ID_BATCH):
            found |= set(s.scalars(select(model.id).where(model.id.in_(ids[i : i + _ID_BATCH]), *where)))
    return found


def _newest_by_id(objects: list[ObjectInfo], *, depth: int) -> dict[str, float]:
    """Newest modification time per id folder (the key part at ``depth``)."""
    newest: dict[str, float] = {}
    for obj in objects:
        parts = obj.key.split("/")
        if len(parts) > depth + 1:
            newest[parts[depth]] = max(newest.get(parts[depth], 0.0), obj.modified)
    return newest
