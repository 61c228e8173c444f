"""Run one job: claim its lease, call ``core.pipeline.run_job``, report, store the outcome.

The task ``jobs.run`` calls ``run_job_delivery(job_id)`` for every delivery of a job id. The database
decides whether this delivery does anything (``claim_job``): a job whose lease is alive elsewhere,
that already finished, or that was cancelled is dropped. While the job runs, a heartbeat thread renews
the lease; the hooks write stage, progress, epoch, per-epoch metrics and events, and ``should_stop``
turns a cancel request (or a lost lease) into ``StopRequested`` inside core. Whatever happens, a job
this worker owns leaves ``running``: succeeded, failed (with the reason) or cancelled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from api.client_errors import TimeLimitExceeded, stored_error
from api.db.crud import job_runs
from api.db.models import Job
from api.db.session import session_scope
from api.settings import Settings, get_settings
from core.errors import CoreInputError, StopRequested
from core.hooks import RunHooks
from core.spec import JobSpec

log = logging.getLogger(__name__)

# Cancel checks hit the DB at most this often: core calls should_stop() every batch.
STOP_POLL_SECONDS = 2.0
# Progress rows are written at most this often (plus at every epoch and stage change).
PROGRESS_WRITE_SECONDS = 1.0
CALLBACK_TIMEOUT_SECONDS = 10.0
RUC_CHECKPOINT_NAME = "ruc_checkpoint.pt"
ARTIFACT_MEDIA_TYPES = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".safetensors": "application/octet-stream",
}

# Share of the overall progress bar per stage; refining's and base_clustering's shares are
# scaled by their epoch counts in ``stage_weights``.
_FIXED_STAGE_WEIGHTS = {"loading": 0.02, "sampling": 0.03, "evaluating": 0.08, "saving": 0.02}
STAGES = ("loading", "base_clustering", "sampling", "refining", "evaluating", "saving")


def worker_identity() -> str:
    """Lease owner name: host, pid and a random suffix (a restarted pid is another owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.storage_dir / "jobs" / job_id


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


def checkpoint_epoch(path: Path) -> int | None:
    """Epoch recorded in a RUC training checkpoint, or None when it cannot be read."""
    try:
        from core.ruc.state import load_state

        return int(load_state(path).epoch)
    except Exception:  # a truncated or foreign file: core decides whether it can resume
        return None


class LeaseKeeper:
    """Renews the job's lease every ``heartbeat_seconds`` in a daemon thread; notes when it is lost."""

    def __init__(self, job_id: str, owner: str, settings: Settings) -> None:
        self.job_id = job_id
        self.owner = owner
        self.settings = settings
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.heartbeat_seconds + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope() as s:
                    alive = job_runs.renew_lease(
                        s, self.job_id, owner=self.owner, lease_seconds=self.settings.lease_seconds
                    )
            except Exception:  # a DB blip: the lease has slack (lease_seconds > heartbeat_seconds)
                log.exception("heartbeat of job %s failed", self.job_id)
                continue
            if not alive:
                log.warning("job %s: lease lost (another worker owns it or it ended)", self.job_id)
                self.lost.set()
                return


class DbHooks:
    """``RunHooks`` callbacks that write to the job row; one short transaction per write."""

    def __init__(self, job_id: str, owner: str, spec: JobSpec, lease: LeaseKeeper) -> None:
        self.job_id = job_id
        self.owner = owner
        self.lease = lease
        self.weights = stage_weights(spec)
        self.stage = ""
        self.cancelled = False
        self._last_progress_write = 0.0
        self._total_written: int | None = None
        self._last_stop_poll = 0.0
        self.time_limit = lease.settings.job_time_limit_seconds  # per attempt; 0: none
        self.deadline = time.monotonic() + self.time_limit if self.time_limit else None

    def run_hooks(self) -> RunHooks:
        return RunHooks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_epoch=self.on_epoch,
            on_event=self.on_event,
            should_stop=self.should_stop,
        )

    def on_stage(self, stage: str) -> None:
        if stage == self.stage:
            return
        self.stage = stage
        with session_scope() as s:
            job_runs.update_progress(
                s,
                self.job_id,
                owner=self.owner,
                stage=stage,
                progress=overall_progress(self.weights, stage, 0.0),
            )
            job_runs.add_event(s, self.job_id, "info", f"stage {stage}")
        self._last_progress_write = time.monotonic()

    def on_progress(self, fraction: float, epoch: int | None, total_epochs: int | None) -> None:
        now = time.monotonic()
        refining = self.stage == "refining"
        first_total = refining and total_epochs is not None and total_epochs != self._total_written
        if not first_total and fraction < 1.0 and now - self._last_progress_write < PROGRESS_WRITE_SECONDS:
            return
        # ``epoch`` here is the epoch in progress; the row's ``epoch`` is the last *finished* one,
        # written by on_epoch. total_epochs describes RUC training only (the API shows "epoch i/N").
        with session_scope() as s:
            job_runs.update_progress(
                s,
                self.job_id,
                owner=self.owner,
                progress=overall_progress(self.weights, self.stage, fraction),
                total_epochs=total_epochs if refining else None,
            )
        self._last_progress_write = now
        if refining and total_epochs is not None:
            self._total_written = total_epochs

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        with session_scope() as s:
            job_runs.put_epoch_metrics(s, self.job_id, epoch, _jsonable(metrics))
            job_runs.update_progress(s, self.job_id, owner=self.owner, epoch=epoch)

    def on_event(self, level: str, message: str) -> None:
        with session_scope() as s:
            job_runs.add_event(s, self.job_id, level, message)

    def should_stop(self) -> bool:
        if self.lease.lost.is_set():
            return True
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeLimitExceeded(self.time_limit)  # ends the run; _execute stores it as the error
        if now - self._last_stop_poll < STOP_POLL_SECONDS:
            return self.cancelled
        self._last_stop_poll = now
        try:
            with session_scope() as s:
                self.cancelled = job_runs.is_cancel_requested(s, self.job_id)
        except Exception:  # a DB blip must not kill a run; the next poll retries
            log.exception("cancel check of job %s failed", self.job_id)
        return self.cancelled


def _jsonable(value: Any) -> Any:
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _resolve_checkpoints(job: Job, spec: JobSpec, settings: Settings) -> dict[str, Path]:
    """Checkpoint id -> file for every checkpoint the spec names; each must be the owner's and ready."""
    ids = [i for i in (spec.base.embedding_checkpoint_id, spec.base.clustering_checkpoint_id) if i]
    out: dict[str, Path] = {}
    with session_scope() as s:
        for cid in ids:
            ckpt = job_runs.get_checkpoint(s, cid)
            if ckpt is None or ckpt.owner_id != job.owner_id:
                raise CoreInputError("checkpoint_id", f"checkpoint {cid} does not exist")
            if ckpt.status != "ready":
                raise CoreInputError("checkpoint_id", f"checkpoint {cid} is {ckpt.status}, not ready")
            out[cid] = settings.storage_dir / ckpt.path
    return out


def _dataset_path(job: Job, settings: Settings) -> Path:
    with session_scope() as s:
        ds = job_runs.get_dataset(s, job.dataset_id)
        if ds is None or ds.owner_id != job.owner_id:
            raise CoreInputError("dataset_id", f"dataset {job.dataset_id} does not exist")
        if ds.status != "ready":
            raise CoreInputError("dataset_id", f"dataset {job.dataset_id} is {ds.status}, not ready")
        return settings.storage_dir / ds.path


def _store_artifacts(job_id: str, artifacts: dict[str, Path], settings: Settings) -> list[dict[str, Any]]:
    """Move the run's artifact files to ``jobs/<id>/artifacts/`` and describe them (size, sha256).

    Only ``jobs/<id>/artifacts/`` survives the run (the work folder is removed after success).
    """
    target_dir = job_dir(settings, job_id) / "artifacts"
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


def sign_payload(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over ``"<timestamp>." + body`` (the timestamp makes a replayed delivery detectable)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def post_callback(job_id: str, url: str, payload: dict[str, Any], settings: Settings) -> None:
    """POST the outcome to ``callback_url``; a failure is an event on the job, never a job failure."""
    import httpx

    body = json.dumps(payload, sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-RUC-Timestamp": timestamp, "User-Agent": "ruc-service"}
    if settings.webhook_secret:
        headers["X-RUC-Signature"] = "sha256=" + sign_payload(settings.webhook_secret, timestamp, body)
    try:
        resp = httpx.post(url, content=body, headers=headers, timeout=CALLBACK_TIMEOUT_SECONDS)
        level, message = (
            ("info", f"callback delivered ({resp.status_code})")
            if resp.status_code < 400
            else ("warning", f"callback answered {resp.status_code}")
        )
    except httpx.HTTPError as exc:
        level, message = "warning", f"callback failed: {type(exc).__name__}: {exc}"
    with session_scope() as s:
        job_runs.add_event(s, job_id, level, message)


def run_job_delivery(
    job_id: str, *, settings: Settings | None = None, device: str | None = None, owner: str | None = None
) -> str:
    """Handle one delivery of ``jobs.run``; returns what happened (``succeeded``, ``dropped: ...``)."""
    settings = settings or get_settings()
    owner = owner or worker_identity()
    with session_scope() as s:
        claim = job_runs.claim_job(s, job_id, owner=owner, lease_seconds=settings.lease_seconds)
        job = claim.job
    if claim.outcome != "claimed" or job is None:
        log.info("job %s: delivery dropped (%s) %s", job_id, claim.outcome, claim.detail)
        return f"dropped: {claim.outcome}"

    try:
        spec = JobSpec.model_validate(job.spec)
    except ValueError as exc:  # a row written under an older spec schema: fail it, do not retry
        with session_scope() as s:
            job_runs.finish_job(s, job_id, owner=owner, status="failed", error=stored_error(exc))
        return "failed"
    with LeaseKeeper(job_id, owner, settings) as lease:
        hooks = DbHooks(job_id, owner, spec, lease)
        status, error, result = _execute(job, spec, hooks, lease, settings, device)
    if status == "lease_lost":
        log.warning("job %s: stopped because the lease was lost; nothing written", job_id)
        return "lease_lost"
    with session_scope() as s:
        finished = job_runs.finish_job(s, job_id, owner=owner, status=status, result=result, error=error)
        if finished:
            level = "info" if status == "succeeded" else ("warning" if status == "cancelled" else "error")
            job_runs.add_event(s, job_id, level, f"job {status}" + (f": {error}" if error else ""))
    if not finished:
        log.warning("job %s: lease lost before the outcome (%s) could be stored", job_id, status)
        return "lease_lost"
    if spec.callback_url:
        payload = {"id": job_id, "object": "job", "status": status, "error": error}
        post_callback(job_id, str(spec.callback_url), payload, settings)
    return status


def _execute(
    job: Job,
    spec: JobSpec,
    hooks: DbHooks,
    lease: LeaseKeeper,
    settings: Settings,
    device: str | None,
) -> tuple[str, str | None, dict[str, Any] | None]:
    """Run the pipeline; map its outcome to (status, error, result). Never raises."""
    job_id = job.id
    try:
        import torch

        from core.datasets import load_dataset
        from core.pipeline import run_job

        hooks.on_stage("loading")
        work_dir = job_dir(settings, job_id) / "work"
        work_dir.mkdir(parents=True, exist_ok=True)
        ckpt_file = work_dir / RUC_CHECKPOINT_NAME
        if job.attempts > 1:
            epoch = checkpoint_epoch(ckpt_file) if ckpt_file.exists() else None
            message = (
                f"resumed from epoch {epoch} (attempt {job.attempts})"
                if epoch is not None
                else f"restarted (attempt {job.attempts}); no epoch checkpoint to resume from"
            )
            hooks.on_event("info", message)
        dataset = load_dataset(_dataset_path(job, settings))
        checkpoints = _resolve_checkpoints(job, spec, settings)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        outcome = run_job(
            spec,
            dataset,
            device=dev,
            work_dir=work_dir,
            checkpoint_paths=checkpoints,
            hooks=hooks.run_hooks(),
            resume=True,
        )
        stored = _store_artifacts(job_id, outcome.artifacts, settings)
        with session_scope() as s:
            for a in stored:
                job_runs.put_artifact(s, job_id, **a)
        # The epoch checkpoint and cached base output are only needed to resume; free the space.
        shutil.rmtree(work_dir, ignore_errors=True)
        return "succeeded", None, _jsonable(outcome.result)
    except StopRequested:
        if lease.lost.is_set():
            return "lease_lost", None, None
        return "cancelled", None, None
    except CoreInputError as exc:
        return "failed", stored_error(exc), None
    except Exception as exc:  # the log has the exception; the row a stable code and message
        log.exception("job %s failed", job_id)
        return "failed", stored_error(exc), None
