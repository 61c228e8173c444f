"""RUC_JOB_TIME_LIMIT_SECONDS: the worker fails a job that runs past it, with a stable error."""

from __future__ import annotations

import time

from test_worker_parts import _blobs_npz, _job_with_dataset, settings  # noqa: F401 (fixture)

from api.schemas.jobs import JobPublic
from service.db.crud import job_runs
from service.db.session import session_scope
from service.settings import Settings

LONG_REFINE = {"strategy": "confidence", "confidence_threshold": 0.5, "epochs": 200, "batch_size": 32}


def test_a_job_past_its_time_limit_fails_with_the_limit_named(settings: Settings) -> None:  # noqa: F811
    from worker.job_runner import run_job_delivery

    job_id = _job_with_dataset(settings, _blobs_npz(), {"refine": LONG_REFINE})
    limited = settings.model_copy(update={"job_time_limit_seconds": 2})
    start = time.monotonic()
    assert run_job_delivery(job_id, settings=limited, device="cpu", owner="w1") == "failed"
    seconds = time.monotonic() - start
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
        messages = job_runs.list_event_messages(s, job_id)
    assert job is not None and job.status == "failed" and job.lease_owner is None
    assert job.error == "time_limit_exceeded: time limit of 2 s exceeded", job.error
    assert job.epoch is None or job.epoch < 200
    public = JobPublic.model_validate(job)
    assert (public.error_code, public.error) == ("time_limit_exceeded", "time limit of 2 s exceeded")
    assert messages[-1] == "job failed: time_limit_exceeded: time limit of 2 s exceeded"
    print(f"time limit 2 s: the job ended failed after {seconds:.1f} s (epoch {job.epoch} of 200)")
    assert seconds < 30
