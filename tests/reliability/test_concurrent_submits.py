"""1,000 concurrent POST /v1/jobs from 4 OS processes against the API on Postgres + Redis: 200
Idempotency-Keys, each sent 5 times at the same moment from different processes, make exactly 200 jobs
(rows, events and broker messages), and every answer is a 202 naming its key's one job.

No worker runs: the jobs stay queued, so the broker's queue holds exactly what the API published."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from load_support import (
    api_only,
    fresh_database,
    private_redis,
    queued_task_args,
    ready_dataset,
    run_bursts,
    service_env,
)
from sqlalchemy import func, select, text

from service.db.models import Job, JobEvent
from service.db.session import session_scope
from service.task_names import GPU_QUEUE, TASK_RUN_JOB

N_KEYS = 200
COPIES = 5
N_PROCESSES = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server: its queue holds only this test's messages."""
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def private_pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def _plan() -> list[list[tuple[str, int]]]:
    """Copy c of key k goes to process (k + c) % N: every process holds copies of every key, so each
    key's copies leave from different processes at about the same moment (the insert race)."""
    per_process: list[list[tuple[str, int]]] = [[] for _ in range(N_PROCESSES)]
    for k in range(N_KEYS):
        for c in range(COPIES):
            per_process[(k + c) % N_PROCESSES].append((f"load-{k:03d}", k))
    return per_process


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_concurrent_idempotent_submits_make_one_job_per_key(
    private_pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    # 200 queued jobs of one key; the default quota allows 50.
    env = service_env(tmp_path, private_pg_url, redis_url, RUC_QUOTA_ACTIVE_JOBS="0")
    with api_only(env, tmp_path, private_pg_url) as svc:
        dataset_id = ready_dataset(svc)
        answers, wall = run_bursts(svc.base_url, svc.key, dataset_id, _plan())
        api_log = svc.api.log() if svc.api else ""

    statuses = Counter(status for _key, status, _job, _replayed, _latency in answers)
    jobs_by_key: dict[str, set[str | None]] = {}
    for key, _status, job_id, _replayed, _latency in answers:
        jobs_by_key.setdefault(key, set()).add(job_id)
    latencies = [latency for *_rest, latency in answers]
    p50, p99 = (_quantile(latencies, q) * 1000 for q in (0.5, 0.99))
    answered_jobs = {job_id for _key, _status, job_id, _replayed, _latency in answers}
    replays = sum(1 for *_head, replayed, _latency in answers if replayed)
    with session_scope(private_pg_url) as session:
        db_jobs = {key: job_id for key, job_id in session.execute(select(Job.idempotency_key, Job.id))}
        n_events = session.scalar(select(func.count()).select_from(JobEvent))
        # Rows inserted count aborted inserts too: beyond 200, each is a copy that lost the race at the
        # unique constraint (rolled back, answered as a replay). Reported, not asserted: timing decides.
        inserted = session.scalar(text("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'jobs'"))
    messages = queued_task_args(redis_url, GPU_QUEUE)

    print(
        f"\nrequests {len(answers)} from {N_PROCESSES} processes, distinct jobs {len(answered_jobs)} "
        f"({len(db_jobs)} rows), "
        f"statuses {dict(sorted(statuses.items()))}, replays {replays}, "
        f"inserts that lost the race {(inserted or 0) - len(db_jobs)}, "
        f"latency p50 {p50:.0f} ms p99 {p99:.0f} ms, "
        f"wall {wall:.1f} s ({len(answers) / wall:.0f} req/s), broker messages {len(messages)}"
    )
    assert len(answers) == N_KEYS * COPIES
    assert "Traceback" not in api_log, api_log[-4000:]
    # The route answers 202 for a new job and for a replay (Idempotent-Replayed: true tells them apart).
    assert statuses == {202: N_KEYS * COPIES}, statuses
    assert len(answered_jobs) == len(db_jobs) == N_KEYS and set(db_jobs) == set(jobs_by_key)
    assert {key: ids for key, ids in jobs_by_key.items() if ids != {db_jobs[key]}} == {}
    assert replays == N_KEYS * (COPIES - 1)
    assert n_events == N_KEYS  # one "job queued" event each: a losing insert left nothing behind
    assert sorted(messages) == sorted((TASK_RUN_JOB, [job_id]) for job_id in db_jobs.values())
