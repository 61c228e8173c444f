"""A job's files: one folder per attempt, resume files carried over, artifacts staged per attempt.

Work folders are local files (core writes them): under the store's own folder with the local backend
(``storage/jobs/<id>/``), under the worker's ``scratch/jobs/<id>/`` with a remote one. There:

* ``attempts/<n>/work/``: attempt n's private folder (core's ``work_dir``). At claim time the resume
  files of the newest earlier attempt (base cache, RUC epoch checkpoint) are hard-linked into it; core
  replaces those files by rename, never in place, so a stalled earlier worker that still writes into
  its own folder cannot change the new attempt's copies. With a remote store an attempt also copies
  its resume files to the store's ``jobs/<id>/attempts/<n>/work/`` (``worker.resume_sync``), and a
  later attempt on a machine without the earlier folder fetches them from there.
* ``attempts/<n>/inputs/``: the dataset and checkpoints fetched from a remote store (removed when the
  attempt ends).

Artifacts go to the store's ``jobs/<id>/artifacts/<n>/`` while the lease holds; they are published by
the artifact rows, written in the same lease-conditional transaction as the job's outcome. A worker
that lost its lease never publishes and removes only its own unpublished folder.

Nothing a worker deletes belongs to another attempt while that attempt may still run: the whole
``attempts/`` tree and the other attempts' artifact folders go only after the outcome is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from service.db.crud.job_runs import Lease
from service.settings import Settings
from service.storage import Storage, StorageError, layout

log = logging.getLogger(__name__)

ARTIFACT_MEDIA_TYPES = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".safetensors": "application/octet-stream",
    ".png": "image/png",  # core.report's figures
    ".html": "text/html; charset=utf-8",  # report.html: opens in the browser from the download URL
    ".onnx": "application/octet-stream",  # model.onnx (ONNX has no registered media type)
}
# Before attempt folders existed, every attempt shared this one; still read when resuming.
LEGACY_WORK = "work"


def work_root(settings: Settings) -> Path:
    """Where work folders live: the store's own folder (local backend), else the worker's scratch."""
    return settings.storage_dir if settings.storage_backend == "local" else settings.scratch_dir


def job_dir(settings: Settings, job_id: str) -> Path:
    return work_root(settings) / "jobs" / job_id


def work_dir(settings: Settings, lease: Lease) -> Path:
    return job_dir(settings, lease.job_id) / "attempts" / str(lease.attempt) / "work"


def inputs_dir(settings: Settings, lease: Lease) -> Path:
    return job_dir(settings, lease.job_id) / "attempts" / str(lease.attempt) / "inputs"


def artifacts_key(lease: Lease) -> str:
    return f"{layout.job_dir(lease.job_id)}/artifacts/{lease.attempt}"


def work_key(job_id: str, attempt: int) -> str:
    """The store's copy of an attempt's resume files (remote stores only)."""
    return f"{layout.job_dir(job_id)}/attempts/{attempt}/work"


def _earlier_work_dirs(settings: Settings, lease: Lease) -> list[Path]:
    """Earlier attempts' work folders, newest first (the legacy shared folder last)."""
    root = job_dir(settings, lease.job_id)
    numbered = [root / "attempts" / str(n) / "work" for n in range(lease.attempt - 1, 0, -1)]
    return [*numbered, root / LEGACY_WORK]


def _link_resume_files(earlier: Path, target: Path) -> bool:
    """Hard-link ``earlier``'s resume files into ``target``; False when it has none."""
    from core.pipeline import resume_files

    found = resume_files(earlier) if earlier.is_dir() else []
    for rel in found:
        src, dest = earlier / rel, target / rel
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except FileNotFoundError:  # replaced between is_file and link: that attempt's newer copy
            continue
        except OSError:  # a filesystem without hard links
            shutil.copy2(src, dest)
    return bool(found)


def prepare_work_dir(settings: Settings, storage: Storage, lease: Lease) -> Path:
    """Create this attempt's work folder holding the newest earlier resume files: linked from an
    earlier folder on this machine, else (remote store) fetched from the store's copy."""
    target = work_dir(settings, lease)
    target.mkdir(parents=True, exist_ok=True)
    for earlier in _earlier_work_dirs(settings, lease):
        if _link_resume_files(earlier, target):
            return target
    if settings.storage_backend != "local":
        from worker.resume_sync import fetch_resume_files

        fetch_resume_files(storage, lease, target)
    return target


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stage_artifacts(
    storage: Storage, lease: Lease, artifacts: dict[str, Path], lost: threading.Event
) -> list[dict[str, Any]] | None:
    """Put the run's artifact files into this attempt's artifact folder of the store and describe them.

    Returns ``finish_job(artifacts=...)`` rows (name, key relative to the store, size, sha256,
    media_type); nothing is visible through the API before that commit. None when the lease was lost
    meanwhile (``lost``): nothing more is put, and the caller discards what was.
    """
    prefix = artifacts_key(lease)
    described = []
    for name, src in sorted(artifacts.items()):
        if lost.is_set():
            return None
        src = Path(src)
        filename = Path(name).name if Path(name).suffix else src.name
        key = f"{prefix}/{filename}"
        digest, size = sha256_file(src), src.stat().st_size
        storage.put_file(key, src, move=True)
        described.append(
            {
                "name": filename,
                "path": key,
                "size": size,
                "sha256": digest,
                "media_type": ARTIFACT_MEDIA_TYPES.get(src.suffix, "application/octet-stream"),
            }
        )
    return described


def discard_unpublished(storage: Storage, lease: Lease) -> None:
    """After a lost lease: drop this attempt's staged artifacts (its work folder may be resumed from)."""
    try:
        storage.delete_prefix(artifacts_key(lease))
    except StorageError as exc:  # the retention sweep removes unpublished folders later
        log.warning("job %s: unpublished artifacts left for the retention sweep: %s", lease.job_id, exc)


def drop_inputs(settings: Settings, lease: Lease) -> None:
    """The attempt's fetched inputs go when it ends: the store keeps the originals."""
    shutil.rmtree(inputs_dir(settings, lease), ignore_errors=True)


def drop_scratch(settings: Settings, lease: Lease) -> None:
    """After a failed or cancelled outcome is committed, with a remote store: this machine's copy of
    the job's work folders goes (the store keeps its resume files until the retention sweep)."""
    if settings.storage_backend != "local":
        shutil.rmtree(job_dir(settings, lease.job_id), ignore_errors=True)


def clean_after_success(settings: Settings, storage: Storage, lease: Lease) -> None:
    """After the success is committed: every attempt's work files and other attempts' artifacts go."""
    root = job_dir(settings, lease.job_id)
    shutil.rmtree(root / "attempts", ignore_errors=True)
    shutil.rmtree(root / LEGACY_WORK, ignore_errors=True)
    keep = artifacts_key(lease)
    job_prefix = layout.job_dir(lease.job_id)
    try:
        if settings.storage_backend != "local":
            storage.delete_prefix(f"{job_prefix}/attempts")
            with contextlib.suppress(OSError):  # the scratch folder of the job, now empty
                root.rmdir()
        folders = {"/".join(o.key.split("/")[:4]) for o in storage.list(f"{job_prefix}/artifacts")}
        stale = folders - {keep}
        for folder in sorted(stale):
            storage.delete_prefix(folder)
    except StorageError as exc:  # the retention sweep removes these leftovers later
        log.warning("job %s: cleanup left for the retention sweep: %s", lease.job_id, exc)
