"""The run's hooks: stage, progress, per-epoch metrics and events written to the job row.

Every write names the run's lease; a refused write marks the lease lost, and ``should_stop`` then
stops core at its next check, so a worker that lost its job stops writing at once. A database error
in one of these writes is retried briefly, then the write is dropped (``worker.db_retry``): telemetry
never fails a run. An epoch's metrics row is kept until it is stored, though: a row dropped during a
database outage goes with the next epoch's write (or the next stage change), so the job's metrics
have no hole. The outcome (``store_outcome``) retries longer and is never dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.hooks import RunHooks
from core.spec import JobSpec
from service.client_errors import TimeLimitExceeded
from service.db.crud import job_runs
from service.db.crud.job_runs import Lease
from service.db.session import session_scope
from worker.db_retry import OUTCOME_RETRY_DELAYS, with_db_retry, write_telemetry
from worker.leases import LeaseKeeper

log = logging.getLogger(__name__)

# Cancel checks hit the DB at most this often: core calls should_stop() every batch.
STOP_POLL_SECONDS = 2.0
# Progress rows are written at most this often (plus at every epoch and stage change).
PROGRESS_WRITE_SECONDS = 1.0

# Share of the overall progress bar per stage; refining's and base_clustering's shares are
# scaled by their epoch counts in ``stage_weights``.
_FIXED_STAGE_WEIGHTS = {"loading": 0.02, "sampling": 0.03, "evaluating": 0.08, "saving": 0.02}
STAGES = ("loading", "base_clustering", "sampling", "refining", "evaluating", "saving")


def stage_weights(spec: JobSpec) -> dict[str, float]:
    """Fraction of the whole run each stage takes, roughly proportional to its epochs of work.

    A RUC epoch trains two networks with several forward passes each, so it costs ~4 base epochs.
    """
    base_units = float(spec.base.fit_epochs) if spec.base.method != "checkpoint" else 2.0
    refine_units = 4.0 * spec.refine.epochs
    remaining = 1.0 - sum(_FIXED_STAGE_WEIGHTS.values())
    weights = dict(_FIXED_STAGE_WEIGHTS)
    weights["base_clustering"] = remaining * base_units / (base_units + refine_units)
    weights["refining"] = remaining * refine_units / (base_units + refine_units)
    return weights


def overall_progress(weights: dict[str, float], stage: str, fraction: float) -> float:
    """Overall 0..1 progress from the current stage and the fraction of it done."""
    done = 0.0
    for name in STAGES:
        if name == stage:
            return min(1.0, done + weights.get(name, 0.0) * min(max(fraction, 0.0), 1.0))
        done += weights.get(name, 0.0)
    return min(done, 1.0)


class DbHooks:
    """``RunHooks`` callbacks that write to the job row; one short transaction per write."""

    def __init__(self, spec: JobSpec, keeper: LeaseKeeper) -> None:
        self.lease = keeper.lease
        self.keeper = keeper
        self.weights = stage_weights(spec)
        self.stage = ""
        self.cancelled = False
        self._last_progress_write = 0.0
        self._total_written: int | None = None
        self._last_stop_poll = 0.0
        self._unstored_epochs: dict[int, dict[str, Any]] = {}  # epoch -> metrics row not yet written
        self.time_limit = keeper.settings.job_time_limit_seconds  # per attempt; 0: none
        self.deadline = time.monotonic() + self.time_limit if self.time_limit else None

    def run_hooks(self) -> RunHooks:
        return RunHooks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_epoch=self.on_epoch,
            on_event=self.on_event,
            should_stop=self.should_stop,
        )

    def _write(self, what: str, write: Callable[[Session], bool]) -> bool | None:
        """Run ``write`` in its own transaction (retried on database errors); note a refusal.

        Returns whether it was written; None when it was dropped after database errors."""

        def transaction() -> bool:
            with session_scope() as s:
                return write(s)

        written = write_telemetry(transaction, what=f"job {self.lease.job_id}: {what}")
        if written is not None:  # None: dropped after a database error; the lease is not in doubt
            self.keeper.holds(written)
        return written

    def on_stage(self, stage: str) -> None:
        if stage == self.stage or self.keeper.lost.is_set():
            return
        if self._unstored_epochs:  # the last epoch's row was dropped: one more try before it is lost
            self._write_epochs()
        self.stage = stage
        progress = overall_progress(self.weights, stage, 0.0)
        self._write(
            f"stage {stage}",
            lambda s: (
                job_runs.update_progress(s, self.lease, stage=stage, progress=progress)
                and job_runs.add_run_event(s, self.lease, "info", f"stage {stage}")
            ),
        )
        self._last_progress_write = time.monotonic()

    def on_progress(self, fraction: float, epoch: int | None, total_epochs: int | None) -> None:
        if self.keeper.lost.is_set():
            return
        now = time.monotonic()
        refining = self.stage == "refining"
        first_total = refining and total_epochs is not None and total_epochs != self._total_written
        if not first_total and fraction < 1.0 and now - self._last_progress_write < PROGRESS_WRITE_SECONDS:
            return
        # ``epoch`` here is the epoch in progress; the row's ``epoch`` is the last *finished* one,
        # written by on_epoch. total_epochs describes RUC training only (the API shows "epoch i/N").
        progress = overall_progress(self.weights, self.stage, fraction)
        total = total_epochs if refining else None
        self._write(
            "progress",
            lambda s: job_runs.update_progress(s, self.lease, progress=progress, total_epochs=total),
        )
        self._last_progress_write = now
        if refining and total_epochs is not None:
            self._total_written = total_epochs

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        if self.keeper.lost.is_set():
            return
        self._unstored_epochs[int(metrics["epoch"])] = jsonable(metrics)
        self._write_epochs()

    def _write_epochs(self) -> None:
        """Write every epoch row not yet stored and the newest epoch number, in one transaction."""
        rows = sorted(self._unstored_epochs.items())
        latest = rows[-1][0]

        def write(s: Session) -> bool:
            written = all(job_runs.put_epoch_metrics(s, self.lease, e, row) for e, row in rows)
            written = written and job_runs.update_progress(s, self.lease, epoch=latest)
            if not written:
                s.rollback()  # the metrics rows must not outlive a refused progress write
            return written

        if self._write(f"epoch {latest} metrics", write):
            for epoch, _ in rows:
                self._unstored_epochs.pop(epoch, None)

    def on_event(self, level: str, message: str) -> None:
        if self.keeper.lost.is_set():
            return
        self._write("event", lambda s: job_runs.add_run_event(s, self.lease, level, message))

    def should_stop(self) -> bool:
        if self.keeper.lost.is_set():
            return True
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeLimitExceeded(self.time_limit)  # ends the run; the runner stores it as the error
        if now - self._last_stop_poll < STOP_POLL_SECONDS:
            return self.cancelled
        self._last_stop_poll = now
        try:
            with session_scope() as s:
                self.cancelled = job_runs.is_cancel_requested(s, self.lease.job_id)
        except Exception:  # a DB blip must not kill a run; the next poll retries
            log.exception("cancel check of job %s failed", self.lease.job_id)
        return self.cancelled


def store_outcome(
    lease: Lease,
    *,
    status: str,
    error: str | None,
    result: dict[str, Any] | None,
    artifacts: list[dict[str, Any]],
) -> bool:
    """Commit the outcome and artifact rows (``finish_job``) plus its event; False: the lease was lost.

    Retried on database errors for ~15 s, then the error propagates (the job is re-run from its
    checkpoint once its lease lapses). A try whose commit reached the database although its answer
    was lost is recognised on the next try: same attempt, already ended with this status.
    """
    level = "info" if status == "succeeded" else ("warning" if status == "cancelled" else "error")
    tries = 0

    def transaction() -> bool:
        nonlocal tries
        tries += 1
        with session_scope() as s:
            if tries > 1:
                job = job_runs.get_job(s, lease.job_id)
                if job is not None and job.attempts == lease.attempt and job.status == status:
                    return True
            finished = job_runs.finish_job(
                s,
                lease,
                status=status,  # type: ignore[arg-type]
                result=result,
                error=error,
                artifacts=artifacts,
            )
            if finished:
                job_runs.add_event(s, lease.job_id, level, f"job {status}" + (f": {error}" if error else ""))
            return finished

    return with_db_retry(transaction, delays=OUTCOME_RETRY_DELAYS, what=f"job {lease.job_id}: outcome")


def jsonable(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and tuples become plain JSON types."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
