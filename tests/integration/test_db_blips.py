"""A database error in the middle of a run: real Postgres errors, raised by a trigger on the job row.

The trigger raises a serialization failure (SQLSTATE 40001) on its first ``fail_times`` firings; a
sequence counts them (``nextval`` survives the rollback of the failed statement)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from test_worker_parts import _blobs_npz, _job_with_dataset

from service.db.crud import job_runs
from service.db.models import JobMetric
from service.db.session import dispose_engines, session_scope
from service.settings import Settings, get_settings

STAGES = ("loading", "base_clustering", "sampling", "refining", "evaluating", "saving")


@pytest.fixture(scope="module")
def pg_url(private_pg_url: str) -> str:
    """This module's own database: the suite's live workers sweep the shared one and would take its jobs."""
    return private_pg_url


@pytest.fixture()
def pg_settings(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("RUC_DATABASE_URL", pg_url)
    monkeypatch.setenv("RUC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RUC_HEARTBEAT_SECONDS", "1")
    get_settings.cache_clear()
    dispose_engines()
    settings = get_settings()
    settings.ensure_dirs()
    yield settings
    dispose_engines()
    get_settings.cache_clear()


def _inject(name: str, job_id: str, when: str, fail_times: int, on: str = "UPDATE ON jobs") -> None:
    """A trigger that fails the first ``fail_times`` writes ``on`` (``UPDATE ON jobs``, ``INSERT ON
    job_metrics``) of ``job_id``'s rows matching ``when``."""
    id_column = "id" if on.endswith(" jobs") else "job_id"
    with session_scope() as s:
        s.execute(text(f"CREATE SEQUENCE {name}_seq"))
        s.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
                f"IF nextval('{name}_seq') <= {fail_times} THEN "
                f"RAISE EXCEPTION 'injected blip' USING ERRCODE = '40001'; END IF; "
                f"RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        s.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE {on} FOR EACH ROW "
                f"WHEN (NEW.{id_column} = '{job_id}' AND {when}) EXECUTE FUNCTION {name}()"
            )
        )


def _fired_and_drop(name: str, table: str = "jobs") -> int:
    with session_scope() as s:
        fired = int(s.execute(text(f"SELECT last_value FROM {name}_seq")).scalar_one())
        s.execute(text(f"DROP TRIGGER {name} ON {table}"))
        s.execute(text(f"DROP FUNCTION {name}()"))
        s.execute(text(f"DROP SEQUENCE {name}_seq"))
    return fired


def test_one_failed_progress_write_and_outcome_write_do_not_fail_the_job(pg_settings: Settings) -> None:
    from worker.job_runner import run_job_delivery

    job_id = _job_with_dataset(pg_settings, _blobs_npz())
    progress_moved = "NEW.status = 'running' AND NEW.progress IS DISTINCT FROM OLD.progress"
    _inject("blip_progress", job_id, progress_moved, fail_times=1)
    _inject("blip_outcome", job_id, "NEW.status = 'succeeded'", fail_times=1)
    try:
        assert run_job_delivery(job_id, settings=pg_settings, device="cpu", owner="w1") == "succeeded"
    finally:
        fired = (_fired_and_drop("blip_progress"), _fired_and_drop("blip_outcome"))
    # Both triggers raised once and then let the retry through.
    assert fired[0] > 1 and fired[1] == 2, fired
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
        messages = job_runs.list_event_messages(s, job_id)
    assert job is not None and job.status == "succeeded" and job.progress == 1.0 and job.epoch == 3
    assert [m for m in messages if m.startswith("stage ")] == [f"stage {st}" for st in STAGES]
    assert messages.count("job succeeded") == 1
    assert not (pg_settings.storage_dir / "jobs" / job_id / "attempts").exists()


def test_telemetry_that_keeps_failing_is_dropped_not_fatal_but_epoch_rows_are_kept(
    pg_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.db_retry import TELEMETRY_RETRY_DELAYS
    from worker.job_runner import run_job_delivery

    job_id = _job_with_dataset(pg_settings, _blobs_npz())
    tries = len(TELEMETRY_RETRY_DELAYS) + 1
    stage_change = "NEW.status = 'running' AND NEW.stage = 'base_clustering' AND OLD.stage = 'loading'"
    _inject("blip_stage", job_id, stage_change, fail_times=tries)
    # Epoch 2's row fails every try of its own write; epoch 3's too, so its last chance is the next stage.
    on_metrics = "INSERT ON job_metrics"
    _inject("blip_epoch2", job_id, "NEW.epoch = 2", fail_times=tries, on=on_metrics)
    _inject("blip_epoch3", job_id, "NEW.epoch = 3", fail_times=tries, on=on_metrics)
    try:
        with caplog.at_level(logging.WARNING, logger="worker.db_retry"):
            result = run_job_delivery(job_id, settings=pg_settings, device="cpu", owner="w1")
    finally:
        fired = _fired_and_drop("blip_stage")
        epochs_fired = tuple(_fired_and_drop(f"blip_epoch{e}", "job_metrics") for e in (2, 3))
    assert result == "succeeded"
    assert fired >= tries, fired
    # Epoch 2's row went again with every try of epoch 3's write (which failed on epoch 3's row) and
    # was stored, with epoch 3's, by the write at the stage change after refining.
    assert epochs_fired == (2 * tries + 1, tries + 1), epochs_fired
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
        messages = job_runs.list_event_messages(s, job_id)
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.epoch)).all()
    assert job is not None and job.status == "succeeded" and job.lease_owner is None and job.epoch == 3
    # The one stage write that failed every try is missing; every other stage was recorded.
    assert "stage base_clustering" not in messages and "stage sampling" in messages
    assert any("stage base_clustering: dropped after" in r.getMessage() for r in caplog.records)
    # No epoch row is missing, and each is what the result reports for its epoch.
    assert [r.epoch for r in rows] == [1, 2, 3]
    assert all(r.metrics.items() <= m.items() for r, m in zip(rows, job.result["per_epoch"], strict=True))
