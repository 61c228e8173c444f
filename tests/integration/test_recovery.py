"""The recovery sweep against a real broker that goes down and comes back, and against a Redis that
lost its messages: no job or upload stays queued, validating or running without a worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from integration_support import Services, digits_npz, small_spec, upload, wait_for, wait_upload
from private_instances import PrivateRedis
from sqlalchemy import update

from service.db.crud import job_runs
from service.db.models import ApiKey, Dataset, Job, new_id, utcnow
from service.db.session import dispose_engines, session_scope
from service.settings import Settings, get_settings


@pytest.fixture()
def pg_settings(private_pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """Settings of this process pointing at the session's Postgres (the sweep opens sessions itself)."""
    monkeypatch.setenv("RUC_DATABASE_URL", private_pg_url)
    monkeypatch.setenv("RUC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RUC_LEASE_SECONDS", "5")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    dispose_engines()


def _dead_workers_job(pg_url: str) -> str:
    """A running job whose worker died: lease expired a second ago, last heartbeat a lease before."""
    with session_scope(pg_url) as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="ruc_x")
        s.add(key)
        s.flush()
        ds = Dataset(id=new_id("ds"), owner_id=key.id, filename="d.npz", size=1, sha256="0" * 64, path="x")
        s.add(ds)
        s.flush()
        job = Job(id=new_id("job"), owner_id=key.id, dataset_id=ds.id, spec={"dataset_id": ds.id})
        s.add(job)
        s.flush()
        job_id = job.id
    with session_scope(pg_url) as s:
        assert job_runs.claim_job(s, job_id, owner="dead", lease_seconds=5).outcome == "claimed"
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                # well past any grace the sweep applies, whichever clock (worker or database) it reads
                lease_expires_at=utcnow() - timedelta(seconds=30),
                updated_at=utcnow() - timedelta(seconds=120),
            )
        )
    return job_id


def test_a_sweep_while_the_broker_is_down_loses_nothing(
    private_pg_url: str, pg_settings: Settings, tmp_path: Path
) -> None:
    from celery import Celery

    from worker.recovery import sweep

    # A private database: the suite's live workers sweep the shared one and would take this job first.
    pg_url = private_pg_url
    job_id = _dead_workers_job(pg_url)
    broker = PrivateRedis(tmp_path)
    app = Celery("sweep-test", broker=broker.url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    try:
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - kombu's connection error type varies by transport
            sweep(app, pg_settings)
        print(f"sweep with the broker down failed after {time.monotonic() - started:.1f} s")
        with session_scope(pg_url) as s:
            job = job_runs.get_job(s, job_id)
            # Nothing was cleared or marked: the row is still what the next sweep (and a claim) look for.
            assert job is not None and job.status == "running" and job.lease_owner == "dead"
            assert job.lease_expires_at is not None and job.lease_expires_at < utcnow()
            assert "worker lost (lease expired); job re-enqueued" not in job_runs.list_event_messages(
                s, job_id
            )
        broker.start()
        assert job_id in sweep(app, pg_settings)
        bodies = [m["headers"] for m in broker.messages("gpu")]
        assert [(h["task"], h["argsrepr"]) for h in bodies].count(("jobs.run", repr([job_id]))) == 1
        assert job_id not in sweep(app, pg_settings)  # sent once: the next pass leaves it alone
        with session_scope(pg_url) as s:
            claim = job_runs.claim_job(s, job_id, owner="next", lease_seconds=5)
            assert claim.outcome == "claimed" and claim.lease.attempt == 2
    finally:
        broker.stop()


def test_rows_whose_message_redis_lost_are_run(services: Services, redis_url: str) -> None:
    import redis

    with services.client() as client:
        ds = wait_upload(client, "/v1/datasets", upload(client, "/v1/datasets", "d.npz", digits_npz(n=200)))
        assert ds["status"] == "ready"
        long_ago = utcnow() - timedelta(minutes=10)
        with session_scope(services.database_url) as s:
            stored = job_runs.get_dataset(s, ds["id"])
            assert stored is not None
            job = Job(
                id=new_id("job"),
                owner_id=stored.owner_id,
                dataset_id=stored.id,
                spec=small_spec(stored.id, epochs=1),
                total_epochs=1,
                created_at=long_ago,
                updated_at=long_ago,
            )
            again = Dataset(
                id=new_id("ds"),
                owner_id=stored.owner_id,
                filename="again.npz",
                size=stored.size,
                sha256=stored.sha256,
                path=stored.path,
                created_at=long_ago,
                updated_at=long_ago,
            )
            s.add_all([job, again])
            s.flush()
            job_id, again_id = job.id, again.id
        # Committed rows, no message anywhere: the API crashed before its enqueue, or Redis lost it.
        redis.Redis.from_url(redis_url).flushdb()
        started = time.monotonic()
        validated = wait_upload(client, "/v1/datasets", {"id": again_id}, timeout=60)
        assert validated["status"] == "ready"
        print(f"validating upload without a message: ready after {time.monotonic() - started:.1f} s")
        done = wait_for(
            lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
            180,
            1.0,
            "the orphaned queued job",
        )
        print(f"queued job without a message: {done['status']} after {time.monotonic() - started:.1f} s")
        assert done["status"] == "succeeded", done
        events = [
            e["message"]
            for e in client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        ]
        assert "job re-enqueued (no worker had claimed it)" in events
