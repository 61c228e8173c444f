"""A job's files: one folder per attempt, resume files carried over, artifacts staged per attempt.

Layout under ``storage/jobs/<id>/``:

* ``attempts/<n>/work/``: attempt n's private folder (core's ``work_dir``). At claim time the resume
  files of the newest earlier attempt (base cache, RUC epoch checkpoint) are hard-linked into it; core
  replaces those files by rename, never in place, so a stalled earlier worker that still writes into
  its own folder cannot change the new attempt's copies.
* ``artifacts/<n>/``: attempt n's artifact files. They are published by the artifact rows, which are
  written in the same lease-conditional transaction as the job's outcome; a worker that lost its lease
  never publishes and removes only its own unpublished folder.

Nothing a worker deletes belongs to another attempt while that attempt may still run: the whole
``attempts/`` tree and the other attempts' artifact folders go only after the outcome is committed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from service.db.crud.job_runs import Lease
from service.settings import Settings

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


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.storage_dir / "jobs" / job_id


def work_dir(settings: Settings, lease: Lease) -> Path:
    return job_dir(settings, lease.job_id) / "attempts" / str(lease.attempt) / "work"


def artifacts_dir(settings: Settings, lease: Lease) -> Path:
    return job_dir(settings, lease.job_id) / "artifacts" / str(lease.attempt)


def _earlier_work_dirs(settings: Settings, lease: Lease) -> list[Path]:
    """Earlier attempts' work folders, newest first (the legacy shared folder last)."""
    root = job_dir(settings, lease.job_id)
    numbered = [root / "attempts" / str(n) / "work" for n in range(lease.attempt - 1, 0, -1)]
    return [*numbered, root / LEGACY_WORK]


def prepare_work_dir(settings: Settings, lease: Lease) -> Path:
    """Create this attempt's work folder holding links to the newest earlier resume files."""
    target = work_dir(settings, lease)
    target.mkdir(parents=True, exist_ok=True)
    from core.pipeline import resume_files

    for earlier in _earlier_work_dirs(settings, lease):
        found = resume_files(earlier) if earlier.is_dir() else []
        if not found:
            continue
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
        break
    return target


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stage_artifacts(settings: Settings, lease: Lease, artifacts: dict[str, Path]) -> list[dict[str, Any]]:
    """Move the run's artifact files into this attempt's artifact folder and describe them.

    Returns ``finish_job(artifacts=...)`` rows (name, path relative to storage, size, sha256,
    media_type); nothing is visible through the API before that commit.
    """
    target_dir = artifacts_dir(settings, lease)
    target_dir.mkdir(parents=True, exist_ok=True)
    described = []
    for name, src in sorted(artifacts.items()):
        src = Path(src)
        filename = Path(name).name if Path(name).suffix else src.name
        dest = target_dir / filename
        if src.resolve() != dest.resolve():
            shutil.move(src, dest)
        described.append(
            {
                "name": filename,
                "path": str(dest.relative_to(settings.storage_dir)),
                "size": dest.stat().st_size,
                "sha256": sha256_file(dest),
                "media_type": ARTIFACT_MEDIA_TYPES.get(dest.suffix, "application/octet-stream"),
            }
        )
    return described


def discard_unpublished(settings: Settings, lease: Lease) -> None:
    """After a lost lease: drop this attempt's staged artifacts (its work folder may be resumed from)."""
    shutil.rmtree(artifacts_dir(settings, lease), ignore_errors=True)


def clean_after_success(settings: Settings, lease: Lease) -> None:
    """After the success is committed: every attempt's work files and other attempts' artifacts go."""
    root = job_dir(settings, lease.job_id)
    shutil.rmtree(root / "attempts", ignore_errors=True)
    shutil.rmtree(root / LEGACY_WORK, ignore_errors=True)
    keep = artifacts_dir(settings, lease).name
    for other in (root / "artifacts").glob("*"):
        if other.is_dir() and other.name != keep:
            shutil.rmtree(other, ignore_errors=True)
