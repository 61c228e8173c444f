"""Lease times are the database's: a worker whose own clock is minutes off neither steals a live
lease nor shortens one. The skewed worker is a real process under libfaketime (``faketime``), talking
to the real Postgres server, whose clock faketime does not touch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from test_leases import job_id  # noqa: F401 - the fixture

from service.db.clock import db_now
from service.db.crud import job_runs
from service.db.models import Job
from service.db.session import session_scope

SKEW_SECONDS = 120
LEASE_SECONDS = 30

_SKEWED_WORKER = """
import json, sys
from datetime import UTC, datetime
from service.db.crud import job_runs, requeue
from service.db.session import session_scope
url, job_id, owner, attempt = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with session_scope(url) as s:
    orphaned = job_id in requeue.orphaned_job_ids(s, requeue_seconds=300)
    marked = requeue.mark_requeued(s, job_id, requeue_seconds=300)
with session_scope(url) as s:
    claim = job_runs.claim_job(s, job_id, owner="skewed", lease_seconds=30).outcome
with session_scope(url) as s:
    renewed = job_runs.renew_lease(s, job_runs.Lease(job_id, owner, attempt), lease_seconds=30)
print(json.dumps({"python_now": datetime.now(UTC).isoformat(), "orphaned": orphaned,
                  "marked": marked, "claim": claim, "renewed": renewed}))
"""


@pytest.fixture(scope="module")
def pg_url(private_pg_url: str) -> str:
    """This module's own database: the suite's live workers sweep the shared one and would take its jobs."""
    return private_pg_url


def _run_skewed(pg_url: str, lease: job_runs.Lease, offset: str) -> dict[str, object]:
    env = {**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    proc = subprocess.run(
        [
            "faketime",
            "-f",
            offset,
            sys.executable,
            "-c",
            _SKEWED_WORKER,
            pg_url,
            lease.job_id,
            lease.owner,
            str(lease.attempt),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _seconds_left(pg_url: str, row_id: str) -> float:
    with session_scope(pg_url) as s:
        expires, now = s.execute(select(Job.lease_expires_at, db_now()).where(Job.id == row_id)).one()
    return (expires - now).total_seconds()


@pytest.mark.parametrize("offset", [f"+{SKEW_SECONDS}s", f"-{SKEW_SECONDS}s"])
def test_a_worker_with_a_skewed_clock_keeps_to_the_database_clock(
    pg_url: str,
    job_id: str,  # noqa: F811
    offset: str,
) -> None:
    assert shutil.which("faketime"), (
        "needs the faketime binary: .ci/run installs it (apt-get install faketime)"
    )
    with session_scope(pg_url) as s:
        lease = job_runs.claim_job(s, job_id, owner="w1", lease_seconds=LEASE_SECONDS).lease
    out = _run_skewed(pg_url, lease, offset)
    # The subprocess's Python clock really is off by the skew (so a Python-side expiry would misjudge).
    skew = (datetime.fromisoformat(str(out["python_now"])) - datetime.now(UTC)).total_seconds()
    assert abs(skew - float(offset[:-1])) < 15, skew
    # Clock ahead: the old code saw w1's lease (30 s left) as 90 s expired and took it away.
    assert out["orphaned"] is False and out["marked"] is False and out["claim"] == "lease_alive"
    # Clock behind: the renewal still grants the full lease, not 30 s - 120 s (already expired).
    assert out["renewed"] is True
    left = _seconds_left(pg_url, job_id)
    assert LEASE_SECONDS - 10 < left <= LEASE_SECONDS, left
    with session_scope(pg_url) as s:
        job = job_runs.get_job(s, job_id)
        assert job is not None and job.lease_owner == "w1" and job.attempts == 1


def test_sqlite_lease_expressions_claim_renew_and_expire(tmp_path: object) -> None:
    """The SQLite spelling of ``db_now`` writes values the ORM reads back and compares in order."""
    from pathlib import Path

    from sqlalchemy import update

    from service.db.migrate import upgrade_head
    from service.db.models import ApiKey, Dataset, new_id

    url = f"sqlite:///{Path(str(tmp_path)) / 'clock.sqlite3'}"
    upgrade_head(url)
    with session_scope(url) as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="ruc_x")
        ds = Dataset(id=new_id("ds"), owner_id=key.id, filename="d", size=1, sha256="0" * 64, path="d")
        job = Job(id=new_id("job"), owner_id=key.id, dataset_id=ds.id, spec={})
        s.add_all([key, ds, job])
        s.flush()
        row = job.id
    with session_scope(url) as s:
        lease = job_runs.claim_job(s, row, owner="w1", lease_seconds=LEASE_SECONDS).lease
        assert job_runs.claim_job(s, row, owner="w2", lease_seconds=LEASE_SECONDS).outcome == "lease_alive"
        assert job_runs.renew_lease(s, lease, lease_seconds=LEASE_SECONDS)
    assert LEASE_SECONDS - 5 < _seconds_left(url, row) <= LEASE_SECONDS
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == row).values(lease_expires_at=db_now(-1)))
    with session_scope(url) as s:
        again = job_runs.claim_job(s, row, owner="w2", lease_seconds=LEASE_SECONDS)
        assert again.outcome == "claimed" and again.lease.attempt == 2
        assert again.job is not None and again.job.started_at is not None
