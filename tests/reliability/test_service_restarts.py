"""Redis and then Postgres restarted under a running job (instances of the suite's own): the job runs on
and succeeds with every epoch's metrics, and afterwards no job or upload is left queued, running or
validating."""

from __future__ import annotations

import time
from typing import Any

import httpx
from integration_support import Services, get_job, job_events, small_spec, wait_for, wait_job_finished
from private_instances import PrivatePostgres, PrivateRedis
from sqlalchemy import func, select

from service.db.models import Checkpoint, Dataset, Job
from service.db.session import session_scope

EPOCHS = 20
# Each service stays down this long: more than one heartbeat (1 s), less than a lease (5 s).
OUTAGE_SECONDS = 2.0


def _wait_epoch(client: httpx.Client, job_id: str, epoch: int) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = get_job(client, job_id)
        assert job["status"] in ("queued", "running"), job
        return job if job["stage"] == "refining" and (job["epoch"] or 0) >= epoch else None

    return wait_for(reached, 120, 0.2, f"epoch {epoch} of {job_id}")


def _outage(stop: Any, start: Any) -> float:
    """Stop a service, keep it down OUTAGE_SECONDS, start it; returns the seconds it was unreachable."""
    down = time.monotonic()
    stop()
    time.sleep(OUTAGE_SECONDS)
    start()
    return time.monotonic() - down


def _unfinished(database_url: str) -> dict[str, int]:
    """Rows still waiting for a worker: queued or running jobs, validating uploads."""
    with session_scope(database_url) as s:
        jobs = s.scalar(select(func.count()).where(Job.status.in_(("queued", "running"))))
        datasets = s.scalar(select(func.count()).where(Dataset.status == "validating"))
        checkpoints = s.scalar(select(func.count()).where(Checkpoint.status == "validating"))
    return {"jobs": int(jobs or 0), "datasets": int(datasets or 0), "checkpoints": int(checkpoints or 0)}


def test_a_job_survives_a_redis_restart_and_a_postgres_restart(
    fault_stack: Services, fault_dataset: str, own_redis: PrivateRedis, own_postgres: PrivatePostgres
) -> None:
    started = time.monotonic()
    spec = small_spec(fault_dataset, epochs=EPOCHS)
    with fault_stack.client() as client:
        resp = client.post("/v1/jobs", json=spec)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        at_redis = _wait_epoch(client, job_id, 1)["epoch"]
        try:
            redis_down = _outage(own_redis.stop, own_redis.start)
            at_pg = _wait_epoch(client, job_id, at_redis + 1)["epoch"]
            pg_down = _outage(own_postgres.stop, own_postgres.start)
            after_pg = _wait_epoch(client, job_id, at_pg + 1)["epoch"]  # it trains on after both
        finally:  # the suite's other tests need both back
            if own_redis.proc is None:
                own_redis.start()
            if not own_postgres.running():
                own_postgres.start()
        job = wait_job_finished(client, job_id, 120)
        wall = time.monotonic() - started
        messages = job_events(client, job_id)
        metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
        result = client.get(f"/v1/jobs/{job_id}/result")
    left = _unfinished(fault_stack.database_url)
    print(
        f"redis down {redis_down:.1f} s at epoch {at_redis}; postgres down {pg_down:.1f} s at epoch {at_pg}"
    )
    print(
        f"job {job['status']} after {wall:.1f} s, attempts {job['attempts']}, metric rows {metrics['epochs']}"
    )
    print(f"left waiting for a worker: {left}")

    assert after_pg > at_pg > at_redis, (at_redis, at_pg, after_pg)
    assert job["status"] == "succeeded", (job, messages[-10:])
    assert result.status_code == 200 and len(result.json()["result"]["per_epoch"]) == EPOCHS
    # An epoch that ended while Postgres was down has its row too (written with a later one).
    assert metrics["epochs"] == list(range(1, EPOCHS + 1)), metrics["epochs"]
    assert left == {"jobs": 0, "datasets": 0, "checkpoints": 0}, left
    assert fault_stack.workers["gpu"].alive() and fault_stack.workers["cpu"].alive()
