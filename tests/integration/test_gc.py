"""Retention (``worker.gc`` / ``ruc-service gc``) on an embedded SQLite database and real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import update
from test_worker_parts import _rows, settings  # noqa: F401 - the fixture

from service.db.clock import db_now
from service.db.models import Artifact, Dataset, Job, new_id
from service.db.session import session_scope
from service.settings import Settings
from worker.gc import collect_garbage

DAY = 86_400


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def _ended_job(owner_dataset_job: tuple[str, str], status: str, days_ago: float) -> str:
    ds_id, template = owner_dataset_job
    with session_scope() as s:
        owner = s.get(Job, template).owner_id  # type: ignore[union-attr]
        job = Job(id=new_id("job"), owner_id=owner, dataset_id=ds_id, spec={})
        s.add(job)
        s.flush()
        s.execute(
            update(Job).where(Job.id == job.id).values(status=status, finished_at=db_now(-days_ago * DAY))
        )
        return job.id


def _dataset(template_ds: str, status: str, days_ago: float) -> str:
    with session_scope() as s:
        owner = s.get(Dataset, template_ds).owner_id  # type: ignore[union-attr]
        ds = Dataset(id=new_id("ds"), owner_id=owner, filename="d", size=1, sha256="0" * 64, path="x")
        s.add(ds)
        s.flush()
        s.execute(
            update(Dataset)
            .where(Dataset.id == ds.id)
            .values(path=f"datasets/{ds.id}/data.npz", status=status, updated_at=db_now(-days_ago * DAY))
        )
        return ds.id


def test_gc_removes_only_expired_failed_cancelled_and_invalid_files(
    settings: Settings,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import main

    rows = _rows()
    store = settings.storage_dir
    old_failed = _ended_job(rows, "failed", 40)
    ckpt = _file(store / f"jobs/{old_failed}/attempts/1/work/ruc.pt", 1000)
    (store / f"jobs/{old_failed}/attempts/2/work").mkdir(parents=True)
    os.link(ckpt, store / f"jobs/{old_failed}/attempts/2/work/ruc.pt")  # resumed: one file, two links
    _file(store / f"jobs/{old_failed}/artifacts/1/a.csv", 200)
    recent_failed = _ended_job(rows, "failed", 1)
    _file(store / f"jobs/{recent_failed}/attempts/1/work/ruc.pt", 500)
    old_cancelled = _ended_job(rows, "cancelled", 31)
    _file(store / f"jobs/{old_cancelled}/attempts/1/work/base.npz", 300)
    old_ok = _ended_job(rows, "succeeded", 90)
    published = _file(store / f"jobs/{old_ok}/artifacts/1/result.json", 80)
    _file(store / f"jobs/{old_ok}/attempts/1/work/ruc.pt", 50)  # the worker died before its cleanup
    _file(store / f"jobs/{old_ok}/artifacts/2/stale.csv", 70)
    with session_scope() as s:
        s.add(
            Artifact(
                job_id=old_ok,
                name="result.json",
                path=f"jobs/{old_ok}/artifacts/1/result.json",
                size=80,
                sha256="0" * 64,
                media_type="application/json",
            )
        )
    bad_old = _dataset(rows[0], "invalid", 45)
    _file(store / f"datasets/{bad_old}/data.npz", 400)
    bad_recent = _dataset(rows[0], "invalid", 2)
    _file(store / f"datasets/{bad_recent}/data.npz", 600)
    ready_old = _dataset(rows[0], "ready", 400)
    _file(store / f"datasets/{ready_old}/data.npz", 700)
    expected = {
        f"jobs/{old_failed}/attempts": 1000,
        f"jobs/{old_failed}/artifacts/1": 200,
        f"jobs/{old_cancelled}/attempts": 300,
        f"jobs/{old_ok}/attempts": 50,
        f"jobs/{old_ok}/artifacts/2": 70,
        f"datasets/{bad_old}": 400,
    }

    planned = collect_garbage(settings, retention_days=30, dry_run=True)
    assert {r.path: r.bytes for r in planned} == expected
    assert ckpt.exists() and (store / f"datasets/{bad_old}/data.npz").exists()  # a dry run removes nothing

    assert main(["gc", "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert f"removed jobs/{old_failed}/attempts  1000 B  (failed job, ended over 30 days ago)" in out
    assert "6 folders removed, freed 2.0 KiB (2020 bytes)" in out
    assert not (store / f"jobs/{old_failed}").exists() and not (store / f"jobs/{old_cancelled}").exists()
    assert not (store / f"datasets/{bad_old}").exists()
    assert published.read_bytes() == b"x" * 80 and not (store / f"jobs/{old_ok}/attempts").exists()
    assert (store / f"jobs/{recent_failed}/attempts/1/work/ruc.pt").stat().st_size == 500
    assert (store / f"datasets/{bad_recent}/data.npz").exists() and (store / f"datasets/{ready_old}").exists()

    assert collect_garbage(settings, retention_days=30) == []  # nothing left to remove
    assert collect_garbage(settings, retention_days=0) == []  # 0: keep forever
    assert collect_garbage(settings, retention_days=0.5)[0].path == f"jobs/{recent_failed}/attempts"


def test_the_worker_sweep_runs_the_retention_at_most_hourly(settings: Settings) -> None:  # noqa: F811
    from worker.recovery import Sweeper

    rows = _rows()
    old = _ended_job(rows, "failed", 40)
    work = _file(settings.storage_dir / f"jobs/{old}/attempts/1/work/ruc.pt", 10)
    sweeper = Sweeper(app=None, settings=settings.model_copy(update={"retention_days": 30}))  # type: ignore[arg-type]
    sweeper._collect_garbage()
    assert not work.exists()
    again = _file(work, 10)
    sweeper._collect_garbage()  # within the hour: not yet
    assert again.exists()
    off = Sweeper(app=None, settings=settings.model_copy(update={"retention_days": 0}))  # type: ignore[arg-type]
    off._collect_garbage()
    assert again.exists()
