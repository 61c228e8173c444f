"""The lease protocol of ``service.db.crud.job_runs`` on real Postgres: who runs a job is decided here."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from service.db.crud import job_runs
from service.db.models import ApiKey, Dataset, Job, new_id, utcnow
from service.db.session import session_scope


@pytest.fixture(scope="module")
def pg_url(private_pg_url: str) -> str:
    """This module's own database: the suite's live workers sweep the shared one and would take its jobs."""
    return private_pg_url


@pytest.fixture()
def job_id(pg_url: str) -> str:
    with session_scope(pg_url) as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="ruc_x")
        s.add(key)
        s.flush()
        ds = Dataset(
            id=new_id("ds"),
            owner_id=key.id,
            filename="d.npz",
            size=1,
            sha256="0" * 64,
            path="datasets/x/data.npz",
        )
        s.add(ds)
        s.flush()
        job = Job(
            id=new_id("job"), owner_id=key.id, dataset_id=ds.id, spec={"dataset_id": ds.id, "num_clusters": 2}
        )
        s.add(job)
        s.flush()
        return job.id


def _claim(url: str, job_id: str, owner: str, lease: float = 30) -> job_runs.Claim:
    with session_scope(url) as s:
        return job_runs.claim_job(s, job_id, owner=owner, lease_seconds=lease)


def _expire(url: str, job_id: str) -> None:
    with session_scope(url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                # As a dead worker leaves it: the last write was its last heartbeat, a lease ago.
                lease_expires_at=utcnow() - timedelta(seconds=1),
                updated_at=utcnow() - timedelta(seconds=31),
            )
        )


def test_second_delivery_is_dropped_while_the_lease_is_alive(pg_url: str, job_id: str) -> None:
    first = _claim(pg_url, job_id, "w1")
    assert first.outcome == "claimed" and first.job is not None
    assert first.job.status == "running" and first.job.attempts == 1 and first.job.lease_owner == "w1"
    second = _claim(pg_url, job_id, "w2")
    assert second.outcome == "lease_alive"
    assert second.job is not None and second.job.lease_owner == "w1" and second.job.attempts == 1


def test_expired_lease_is_reclaimed_and_the_old_owner_can_no_longer_write(pg_url: str, job_id: str) -> None:
    assert _claim(pg_url, job_id, "w1").outcome == "claimed"
    _expire(pg_url, job_id)
    again = _claim(pg_url, job_id, "w2")
    assert again.outcome == "claimed" and again.job is not None and again.job.attempts == 2
    old, new = job_runs.Lease(job_id, "w1", 1), again.lease
    with session_scope(pg_url) as s:
        assert not job_runs.renew_lease(s, old, lease_seconds=30)
        assert not job_runs.update_progress(s, old, progress=0.5)
        assert not job_runs.finish_job(s, old, status="succeeded", result={"x": 1})
        assert job_runs.renew_lease(s, new, lease_seconds=30)
        assert job_runs.finish_job(s, new, status="succeeded", result={"x": 2})
    with session_scope(pg_url) as s:
        job = job_runs.get_job(s, job_id)
        assert (
            job is not None and job.status == "succeeded" and job.result == {"x": 2} and job.progress == 1.0
        )
        assert job.lease_owner is None
    assert _claim(pg_url, job_id, "w3").outcome == "finished"


def test_poison_job_fails_after_max_attempts(pg_url: str, job_id: str) -> None:
    for attempt in range(1, 4):
        claim = _claim(pg_url, job_id, f"w{attempt}")
        assert claim.outcome == "claimed" and claim.job is not None and claim.job.attempts == attempt
        _expire(pg_url, job_id)
    final = _claim(pg_url, job_id, "w4")
    assert final.outcome == "exhausted"
    assert final.job is not None and final.job.status == "failed"
    assert final.job.error is not None and final.job.error.startswith("worker lost 3 times")
    assert _claim(pg_url, job_id, "w5").outcome == "finished"


def test_cancel_before_start_ends_the_job_without_running_it(pg_url: str, job_id: str) -> None:
    with session_scope(pg_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    claim = _claim(pg_url, job_id, "w1")
    assert claim.outcome == "cancelled"
    with session_scope(pg_url) as s:
        job = job_runs.get_job(s, job_id)
        assert job is not None and job.status == "cancelled" and job.attempts == 0


def test_expired_lease_is_requeued_once_across_competing_sweeps(pg_url: str, job_id: str) -> None:
    from service.db.crud import requeue

    assert _claim(pg_url, job_id, "w1").outcome == "claimed"
    with session_scope(pg_url) as s:
        assert job_id not in requeue.orphaned_job_ids(s, requeue_seconds=300)
    _expire(pg_url, job_id)
    with session_scope(pg_url) as s:
        assert job_id in requeue.orphaned_job_ids(s, requeue_seconds=300)
        first = requeue.mark_requeued(s, job_id, requeue_seconds=300)
    with session_scope(pg_url) as s:
        second = requeue.mark_requeued(s, job_id, requeue_seconds=300)
        assert job_id not in requeue.orphaned_job_ids(s, requeue_seconds=300)
    assert first and not second
    with session_scope(pg_url) as s:
        assert "worker lost (lease expired); job re-enqueued" in job_runs.list_event_messages(s, job_id)
        job = job_runs.get_job(s, job_id)
        # The lease is left to expire, never cleared: the row stays claimable whatever the broker does.
        assert job is not None and job.lease_owner == "w1" and job.lease_expires_at is not None
    claim = _claim(pg_url, job_id, "w2")
    assert claim.outcome == "claimed" and claim.job is not None and claim.job.attempts == 2


def test_a_stale_lease_writes_no_event_metric_artifact_or_status(pg_url: str, job_id: str) -> None:
    from sqlalchemy import func, select

    from service.db.models import Artifact, JobEvent, JobMetric

    first = _claim(pg_url, job_id, "w1")
    old = first.lease
    with session_scope(pg_url) as s:
        assert job_runs.add_run_event(s, old, "info", "w1 was here")
        assert job_runs.put_epoch_metrics(s, old, 1, {"loss": 1.0})
    _expire(pg_url, job_id)
    # The same owner name claiming again is still a new lease: the attempt number differs.
    new = _claim(pg_url, job_id, "w1").lease
    assert new.attempt == old.attempt + 1
    artifact = {
        "name": "a.csv",
        "path": "jobs/x/a.csv",
        "size": 1,
        "sha256": "0" * 64,
        "media_type": "text/csv",
    }

    def counts() -> tuple[int, int, int]:
        with session_scope(pg_url) as s:
            return tuple(  # type: ignore[return-value]
                s.scalar(select(func.count()).select_from(t).where(t.job_id == job_id))
                for t in (JobEvent, JobMetric, Artifact)
            )

    before = counts()
    with session_scope(pg_url) as s:
        assert not job_runs.add_run_event(s, old, "info", "stale event")
        assert not job_runs.put_epoch_metrics(s, old, 2, {"loss": 0.5})
        assert not job_runs.update_progress(s, old, stage="saving", epoch=2)
        assert not job_runs.finish_job(s, old, status="succeeded", result={"x": 1}, artifacts=[artifact])
    assert counts() == before
    with session_scope(pg_url) as s:
        job = job_runs.get_job(s, job_id)
        assert job is not None and job.status == "running" and job.epoch is None and job.result is None
        assert job_runs.finish_job(s, new, status="succeeded", result={"x": 2}, artifacts=[artifact])
    assert counts() == (before[0], before[1], before[2] + 1)


def test_epoch_metrics_are_replaced_on_a_repeated_epoch(pg_url: str, job_id: str) -> None:
    from sqlalchemy import select

    from service.db.models import JobMetric

    lease = _claim(pg_url, job_id, "w1").lease
    with session_scope(pg_url) as s:
        assert job_runs.put_epoch_metrics(s, lease, 1, {"loss": 2.0})
        assert job_runs.put_epoch_metrics(s, lease, 2, {"loss": 1.5})
    with session_scope(pg_url) as s:
        assert job_runs.put_epoch_metrics(s, lease, 2, {"loss": 1.25})
    with session_scope(pg_url) as s:
        rows = s.execute(
            select(JobMetric.epoch, JobMetric.metrics)
            .where(JobMetric.job_id == job_id)
            .order_by(JobMetric.epoch)
        ).all()
    assert [(e, m["loss"]) for e, m in rows] == [(1, 2.0), (2, 1.25)]
