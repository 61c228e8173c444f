"""Job submission: spec checks against the owner's datasets and checkpoints, quotas, the memory
estimate, idempotency, enqueue."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.files import remove_after_commit
from api.memory_estimate import estimate_at_shrink_floor
from api.problems import FieldProblem, ProblemError, field_error
from api.queue import EnqueueError, enqueue
from api.quotas import check_active_jobs
from core.errors import CoreInputError
from core.spec import JobSpec, resolve_from_facts
from service.callback_urls import submit_problem
from service.client_errors import BROKER_UNAVAILABLE, BROKER_UNAVAILABLE_MESSAGE, format_error, public_reason
from service.db.crud import checkpoints as ck_crud
from service.db.crud import datasets as ds_crud
from service.db.crud import jobs as jobs_crud
from service.db.models import FINISHED_STATUSES, Dataset, Job, new_id, utcnow
from service.settings import Settings
from service.storage import Storage, job_dir
from service.task_names import TASK_RUN_JOB

log = logging.getLogger("api.services.jobs")
IDEMPOTENCY_FIELD = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_LEN = 255
# jobs.error of a job whose message never reached the broker; a replay of its key queues it again.
UNSENT_ERROR = format_error(BROKER_UNAVAILABLE, BROKER_UNAVAILABLE_MESSAGE)
BROKER_RETRY_AFTER_S = 5
GiB = 1024**3


def request_hash(spec_json: dict) -> str:
    """sha256 of the canonical spec: defaults filled in, keys sorted, so equal requests hash equal."""
    return hashlib.sha256(json.dumps(spec_json, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_inputs(
    session: Session, owner_id: str, spec: JobSpec
) -> tuple[Dataset, str | None, dict[str, Any] | None]:
    """4xx naming the field for every reference the job could not run with; returns the dataset,
    the backbone an uploaded checkpoint declares (clustering first) and a ViT's architecture facts."""
    dataset = ds_crud.get_dataset(session, owner_id, spec.dataset_id)
    if dataset is None:
        raise field_error(422, "dataset_id", f"no dataset {spec.dataset_id!r}", slug="unknown-reference")
    if dataset.status != "ready":
        why = f" ({public_reason(dataset.reason)})" if dataset.reason else ""
        raise field_error(
            409, "dataset_id", f"dataset is {dataset.status}{why}; wait until it is ready", slug="not-ready"
        )
    facts = dataset.facts or {}
    count = facts.get("count")
    # num_clusters is None when base.auto_k estimates it; the estimate never exceeds the image count.
    if isinstance(count, int) and spec.num_clusters is not None and spec.num_clusters > count:
        raise field_error(422, "num_clusters", f"{spec.num_clusters} clusters for {count} samples")
    try:
        resolve_from_facts(spec, facts)
    except CoreInputError as exc:
        raise field_error(422, exc.field, exc.problem) from None
    if spec.base.method == "labels" and not facts.get("has_assignments"):
        raise field_error(
            422, "base.method", "'labels' needs a dataset with uploaded 'assignments' or 'assignment_probs'"
        )
    wanted = (
        ("base.embedding_checkpoint_id", spec.base.embedding_checkpoint_id, "embedding"),
        ("base.clustering_checkpoint_id", spec.base.clustering_checkpoint_id, "clustering"),
    )
    backbone: str | None = None
    vit: dict[str, Any] | None = None
    for field, ck_id, kind in wanted:
        if ck_id is None:
            continue
        ck = ck_crud.get_checkpoint(session, owner_id, ck_id)
        if ck is None:
            raise field_error(422, field, f"no checkpoint {ck_id!r}", slug="unknown-reference")
        if ck.status != "ready":
            why = f" ({public_reason(ck.reason)})" if ck.reason else ""
            raise field_error(409, field, f"checkpoint is {ck.status}{why}", slug="not-ready")
        if ck.kind != kind:
            raise field_error(422, field, f"checkpoint is a {ck.kind} model, a {kind} model is needed")
        info_k = (ck.info or {}).get("num_clusters")
        if (
            kind == "clustering"
            and isinstance(info_k, int)
            and spec.num_clusters is not None
            and info_k != spec.num_clusters
        ):
            raise ProblemError(
                422,
                f"num_clusters {spec.num_clusters} differs from the checkpoint's {info_k}",
                slug="validation-error",
                errors=[FieldProblem("num_clusters", f"the clustering checkpoint has {info_k} clusters")],
            )
        declared = (ck.info or {}).get("backbone")
        if backbone is None and isinstance(declared, str):
            backbone, vit = declared, (ck.info or {}).get("vit")
    return dataset, backbone, vit


def _check_memory(
    settings: Settings, spec: JobSpec, dataset: Dataset, backbone: str | None, vit: dict[str, Any] | None
) -> None:
    """422 naming the field to change when the job's estimated memory exceeds the worker's even at the
    smallest batch the worker's memory preflight may shrink it to (``shrink_floor``)."""
    budget = settings.worker_memory_bytes
    estimate = estimate_at_shrink_floor(
        spec, dataset.facts or {}, checkpoint_backbone=backbone, checkpoint_vit=vit
    )
    if budget <= 0 or estimate is None or estimate.total <= budget:
        return
    field = estimate.largest_field()
    problem = (
        f"the job needs an estimated {estimate.describe()} of worker memory at batch size "
        f"{estimate.batch_size} (the least the preflight may shrink refine.batch_size to), over the "
        f"worker's {budget / GiB:.1f} GiB (RUC_WORKER_MEMORY_BYTES); change {field}"
    )
    raise ProblemError(
        422,
        problem,
        slug="exceeds-worker-memory",
        errors=[FieldProblem(field, problem)],
        extra={"estimated_bytes": estimate.total, "worker_memory_bytes": budget},
    )


def _check_callback_url(settings: Settings, spec: JobSpec) -> None:
    """422 for a callback_url the worker would refuse to call (its address, user info, port 0)."""
    if spec.callback_url is None:
        return
    problem = submit_problem(str(spec.callback_url), settings)
    if problem is not None:
        raise field_error(422, "callback_url", problem)


@dataclass
class Submission:
    job: Job
    replayed: bool


def _enqueue_or_fail(session: Session, settings: Settings, job: Job) -> None:
    """Publish ``jobs.run``; when the broker refuses, the job fails as unsent and the client gets a 503."""
    try:
        enqueue(settings, TASK_RUN_JOB, [job.id])
    except EnqueueError as exc:  # queue.py logged the broker's error for the operator
        job.status, job.error, job.finished_at = "failed", UNSENT_ERROR, utcnow()
        jobs_crud.add_event(session, job.id, "error", "not queued: the task broker was unavailable")
        session.commit()
        raise ProblemError(
            503,
            f"the task broker is unavailable, so job {job.id} was not queued; retry the same request "
            "with the same Idempotency-Key to queue it",
            slug="broker-unavailable",
            headers={"Retry-After": str(BROKER_RETRY_AFTER_S)},
        ) from exc


def _replay(session: Session, settings: Settings, existing: Job, digest: str) -> Submission:
    if existing.request_hash != digest:
        raise field_error(
            422,
            IDEMPOTENCY_FIELD,
            "this key was already used with a different request body",
            slug="idempotency-key-reused",
        )
    # A job the broker never got is queued again by the retry its 503 asked for; one retry wins.
    if existing.error == UNSENT_ERROR and jobs_crud.requeue_unsent(
        session, existing.id, stored_error=UNSENT_ERROR
    ):
        jobs_crud.add_event(session, existing.id, "info", "job queued (retry after the broker was down)")
        session.commit()
        session.refresh(existing)
        _enqueue_or_fail(session, settings, existing)
    # End the read transaction here, in the route's thread, so the connection goes back to the pool.
    # Held until the request's teardown, it stays checked out while FastAPI waits for a second thread-pool
    # slot to validate the response: with more concurrent replays than connections, every connection is
    # held that way while every slot waits for one, a deadlock until the pool timeout answers 500s
    # (tests/reliability/test_concurrent_submits.py).
    session.commit()
    return Submission(existing, replayed=True)


def submit_job(
    session: Session, settings: Settings, owner_id: str, spec: JobSpec, idempotency_key: str | None
) -> Submission:
    """Validate, insert and enqueue a job; an Idempotency-Key replay returns the original job.

    The (owner_id, idempotency_key) unique constraint settles races: the loser of a concurrent insert
    rolls back and answers with the winner's job. A replay is answered before the quota check, so a
    client retrying a submit it already made never gets a 429 for it.
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LEN:
        raise field_error(422, IDEMPOTENCY_FIELD, f"must be 1..{MAX_IDEMPOTENCY_KEY_LEN} characters")
    spec_json = spec.model_dump(mode="json")
    digest = request_hash(spec_json)
    if idempotency_key is not None:
        existing = jobs_crud.get_job_by_idempotency_key(session, owner_id, idempotency_key)
        if existing is not None:
            return _replay(session, settings, existing, digest)
    dataset, backbone, vit = _check_inputs(session, owner_id, spec)
    _check_callback_url(settings, spec)
    _check_memory(settings, spec, dataset, backbone, vit)
    check_active_jobs(session, settings, owner_id)
    job_id = new_id("job")
    try:
        job = jobs_crud.create_job(
            session,
            job_id=job_id,
            owner_id=owner_id,
            dataset_id=spec.dataset_id,
            spec=spec_json,
            total_epochs=spec.refine.epochs,
            max_attempts=settings.max_attempts,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        jobs_crud.add_event(session, job_id, "info", "job queued")
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = (
            jobs_crud.get_job_by_idempotency_key(session, owner_id, idempotency_key)
            if idempotency_key is not None
            else None
        )
        if existing is None:
            raise
        return _replay(session, settings, existing, digest)
    _enqueue_or_fail(session, settings, job)
    return Submission(job, replayed=False)


def cancel_job(session: Session, owner_id: str, job_id: str) -> Job:
    job = jobs_crud.get_job(session, owner_id, job_id)
    if job is None:
        raise ProblemError(404, f"job {job_id!r} not found", slug="not-found")
    if jobs_crud.cancel_queued(session, job_id):
        jobs_crud.add_event(session, job_id, "info", "cancelled before it started")
    elif jobs_crud.request_cancel(session, job_id):
        jobs_crud.add_event(session, job_id, "info", "cancel requested; the worker stops within an epoch")
    else:
        session.refresh(job)
        if job.status in FINISHED_STATUSES:
            raise ProblemError(409, f"job is already {job.status}", slug="job-finished")
    session.commit()
    session.refresh(job)
    return job


def delete_job(session: Session, storage: Storage, owner_id: str, job_id: str) -> None:
    job = jobs_crud.get_job(session, owner_id, job_id)
    if job is None:
        raise ProblemError(404, f"job {job_id!r} not found", slug="not-found")
    if not jobs_crud.delete_job_unless_running(session, job_id):
        raise ProblemError(409, "job is running; cancel it first", slug="job-running")
    session.commit()
    # Files after the commit: a failed commit must not leave a row whose files are gone. Artifacts and
    # resume files all live under the job's folder.
    remove_after_commit(storage, job_dir(job_id))
