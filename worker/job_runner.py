"""Run one job: claim its lease, call ``core.pipeline.run_job``, report, store the outcome.

The task ``jobs.run`` calls ``run_job_delivery(job_id)`` for every delivery of a job id. The database
decides whether this delivery does anything (``claim_job``): a job whose lease is alive elsewhere,
that already finished, or that was cancelled is dropped. The claim's ``Lease`` (owner and attempt)
is named by every later write (``worker.progress``), the attempt works in its own folder
(``worker.artifacts``), and the outcome and artifact rows are one lease-conditional commit, so a
worker that lost its lease writes nothing and deletes nothing of the new owner's. Whatever happens, a
job this worker owns leaves ``running``: succeeded, failed (with the reason) or cancelled; a job with
a ``callback_url`` then gets a ``webhooks.deliver`` task on the cpu queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import CoreInputError, InsufficientMemory, RankLost, StopRequested, TrainingDiverged
from core.spec import JobSpec
from service.client_errors import stored_error
from service.db.crud import job_runs
from service.db.crud.job_runs import Lease
from service.db.models import Job, new_id
from service.db.session import session_scope
from service.settings import Settings, get_settings
from service.storage import InvalidKey, ObjectNotFound, Storage, get_storage
from service.task_names import TASK_DELIVER_WEBHOOK, TASK_QUEUES
from worker import artifacts
from worker.leases import LeaseKeeper, worker_identity
from worker.progress import DbHooks, jsonable, store_outcome
from worker.webhooks import callback_url_of

log = logging.getLogger(__name__)

# publish(task_name, args, queue): how the outcome's follow-up tasks reach the broker.
Publish = Callable[[str, list[Any], str], None]
Outcome = tuple[str, str | None, dict[str, Any] | None, list[dict[str, Any]]]


def _celery_publish(task: str, args: list[Any], queue: str) -> None:
    from worker.celery_app import app

    app.send_task(task, args=args, queue=queue)


def checkpoint_epoch(path: Path) -> int | None:
    """Epoch recorded in a RUC training checkpoint, or None when it cannot be read."""
    try:
        from core.ruc.state import load_state

        return int(load_state(path).epoch)
    except Exception:  # a truncated or foreign file: core decides whether it can resume
        return None


def _fetch(storage: Storage, key: str, cache: Path, field: str, what: str) -> Path:
    """An input as a local file: the store's own (local backend) or a copy in the attempt's cache."""
    try:
        return storage.local_copy(key, cache)
    except (ObjectNotFound, InvalidKey):
        raise CoreInputError(field, f"the file of {what} is missing from storage") from None


def _resolve_checkpoints(job: Job, spec: JobSpec, storage: Storage, cache: Path) -> dict[str, Path]:
    """Checkpoint id -> file for every checkpoint the spec names; each must be the owner's and ready.

    Validation wrote the upload's statement (backbone, normalisation) beside the stored file; a copy
    fetched from a remote store gets it rebuilt beside it from the row's validated ``stated`` fields.
    """
    ids = [i for i in (spec.base.embedding_checkpoint_id, spec.base.clustering_checkpoint_id) if i]
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    with session_scope() as s:
        for cid in ids:
            ckpt = job_runs.get_checkpoint(s, cid)
            if ckpt is None or ckpt.owner_id != job.owner_id:
                raise CoreInputError("checkpoint_id", f"checkpoint {cid} does not exist")
            if ckpt.status != "ready":
                raise CoreInputError("checkpoint_id", f"checkpoint {cid} is {ckpt.status}, not ready")
            found[cid] = (ckpt.path, dict((ckpt.info or {}).get("stated") or {}))
    out: dict[str, Path] = {}
    for cid, (key, stated) in found.items():
        out[cid] = _fetch(storage, key, cache, "checkpoint_id", f"checkpoint {cid}")
        if storage.local_path(key) is None:
            from core.models import parse_statement, write_statement

            write_statement(out[cid], parse_statement(stated))
    return out


def _dataset_path(job: Job, storage: Storage, cache: Path) -> Path:
    with session_scope() as s:
        ds = job_runs.get_dataset(s, job.dataset_id)
        if ds is None or ds.owner_id != job.owner_id:
            raise CoreInputError("dataset_id", f"dataset {job.dataset_id} does not exist")
        if ds.status != "ready":
            raise CoreInputError("dataset_id", f"dataset {job.dataset_id} is {ds.status}, not ready")
        key = ds.path
    return _fetch(storage, key, cache, "dataset_id", f"dataset {job.dataset_id}")


def run_job_delivery(
    job_id: str,
    *,
    settings: Settings | None = None,
    device: str | None = None,
    owner: str | None = None,
    publish: Publish | None = None,
) -> str:
    """Handle one delivery of ``jobs.run``; returns what happened (``succeeded``, ``dropped: ...``)."""
    settings = settings or get_settings()
    owner = owner or worker_identity()
    with session_scope() as s:
        claim = job_runs.claim_job(s, job_id, owner=owner, lease_seconds=settings.lease_seconds)
        job = claim.job
    if claim.outcome != "claimed" or job is None:
        log.info("job %s: delivery dropped (%s) %s", job_id, claim.outcome, claim.detail)
        if job is not None and claim.outcome in ("exhausted", "cancelled"):  # this delivery ended it
            _queue_callback(job, publish or _celery_publish)
        return f"dropped: {claim.outcome}"
    lease = claim.lease
    try:
        spec = JobSpec.model_validate(job.spec)
    except ValueError as exc:  # a row written under an older spec schema: fail it, do not retry
        outcome: Outcome = ("failed", stored_error(exc), None, [])
    else:
        with LeaseKeeper(lease, settings) as keeper:
            outcome = _execute(job, spec, DbHooks(spec, keeper), keeper, settings, device)
    status, error, result, staged = outcome
    # Files are removed below only after this commit: a crash before it leaves everything to resume from.
    finished = status not in ("lease_lost", "rank_lost") and store_outcome(
        lease, status=status, error=error, result=result, artifacts=staged
    )
    if status == "rank_lost":  # like a lost worker: the lease lapses, recovery re-queues, it resumes
        artifacts.discard_unpublished(get_storage(settings), lease)
        return status
    if not finished:
        log.warning(
            "job %s: lease lost before the outcome (%s) could be stored; nothing written", job_id, status
        )
        artifacts.discard_unpublished(get_storage(settings), lease)
        return "lease_lost"
    if status == "succeeded":
        artifacts.clean_after_success(settings, get_storage(settings), lease)
    else:
        artifacts.drop_scratch(settings, lease)
    _queue_callback(job, publish or _celery_publish)
    return status


def _queue_callback(job: Job, publish: Publish) -> None:
    """Hand the callback to ``webhooks.deliver``; a broker outage costs the callback, never the job."""
    if callback_url_of(job.spec) is None:
        return
    try:
        publish(TASK_DELIVER_WEBHOOK, [job.id, new_id("msg")], TASK_QUEUES[TASK_DELIVER_WEBHOOK])
    except Exception:
        log.exception("job %s: callback could not be queued", job.id)
        with session_scope() as s:
            job_runs.add_finished_job_event(
                s, job.id, "warning", "callback not sent: task broker unavailable"
            )


def preflight_cap(settings: Settings, device_type: str) -> int:
    """The memory preflight's cap (core/ruc/preflight.py) on a ``device_type`` ('cpu', 'cuda'): the
    explicit RUC_DEVICE_MEMORY_BYTES, else on the CPU the worker's memory (0 on CUDA: its free memory)."""
    if settings.device_memory_bytes > 0:
        return settings.device_memory_bytes
    return settings.worker_memory_bytes if device_type == "cpu" else 0


def _resume_note(settings: Settings, lease: Lease, work_dir: Path) -> str | None:
    if lease.attempt <= 1:
        return None
    from core.pipeline import RUC_CHECKPOINT

    ckpt = work_dir / RUC_CHECKPOINT
    epoch = checkpoint_epoch(ckpt) if ckpt.exists() else None
    if epoch is not None:
        return f"resumed from epoch {epoch} (attempt {lease.attempt})"
    return f"restarted (attempt {lease.attempt}); no epoch checkpoint to resume from"


def _execute(
    job: Job, spec: JobSpec, hooks: DbHooks, keeper: LeaseKeeper, settings: Settings, device: str | None
) -> Outcome:
    """Run the pipeline; map its outcome to (status, error, result, staged artifacts). Never raises."""
    lease = keeper.lease
    storage = get_storage(settings)
    cache = artifacts.inputs_dir(settings, lease)
    try:
        import torch

        from core.datasets import load_dataset
        from core.pipeline import run_job

        hooks.on_stage("loading")
        work_dir = artifacts.prepare_work_dir(settings, storage, lease)
        note = _resume_note(settings, lease, work_dir)
        if note:
            hooks.on_event("info", note)
        dataset = load_dataset(_dataset_path(job, storage, cache))
        checkpoints = _resolve_checkpoints(job, spec, storage, cache)
        from core.distributed import launched, parse_devices

        dev = device or settings.worker_devices or ("cuda" if torch.cuda.is_available() else "cpu")
        run_hooks = hooks.run_hooks()
        if settings.storage_backend != "local":
            from worker.resume_sync import ResumeSync

            run_hooks = ResumeSync(storage, lease, work_dir, keeper.lost).hooks(run_hooks)
        # Several devices: this process is rank 0 and its hooks report; core.distributed starts the rest.
        with launched(parse_devices(dev), timeout_s=settings.distributed_timeout_seconds) as rank0_device:
            outcome = run_job(
                spec,
                dataset,
                device=rank0_device,
                work_dir=work_dir,
                checkpoint_paths=checkpoints,
                hooks=run_hooks,
                resume=True,
                memory_limit_bytes=preflight_cap(settings, rank0_device.type),
            )
        if keeper.lost.is_set():
            return "lease_lost", None, None, []
        staged = artifacts.stage_artifacts(storage, lease, outcome.artifacts, keeper.lost)
        if staged is None:  # lost while putting them: the caller discards what was put
            return "lease_lost", None, None, []
        return "succeeded", None, jsonable(outcome.result), staged
    except RankLost as exc:
        log.warning("job %s: %s", job.id, exc)
        hooks.on_event(
            "warning", "a training rank was lost; the job is retried from its last epoch checkpoint"
        )
        return "rank_lost", None, None, []
    except StopRequested:
        if keeper.lost.is_set():
            return "lease_lost", None, None, []
        return "cancelled", None, None, []
    except Exception as exc:  # the log has the exception; the row a stable code and message
        if not isinstance(exc, CoreInputError | TrainingDiverged | InsufficientMemory):
            log.exception("job %s failed", job.id)
        return "failed", stored_error(exc), None, []
    finally:
        artifacts.drop_inputs(settings, lease)
