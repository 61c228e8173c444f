"""Upload validation through the real API and cpu worker on Postgres + Redis: a validation whose worker
is SIGKILLed every time ends ``invalid`` after ``RUC_MAX_ATTEMPTS`` (by the recovery sweep's and by
the broker's redelivery alike), and an archive with undecodable member names ends ``invalid`` with a
readable reason instead of staying ``validating``."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import (
    PG_ADMIN_URL,
    REDIS_HOST,
    Services,
    _pg_available,
    create_key,
    digits_npz,
    service_env,
    upload,
    wait_for,
    wait_upload,
)
from upload_bombs import UNDECODABLE_REASON, undecodable_tar

from service.db.crud import job_runs
from service.db.session import dispose_engines, session_scope

MAX_ATTEMPTS = 2
# Long enough that a retried write lands before the sweep would send the upload again.
REQUEUE_SECONDS = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """API + one cpu worker on a database and Redis number of their own (no other worker may take
    these messages), with ``RUC_REQUEUE_SECONDS=8`` and ``RUC_MAX_ATTEMPTS=2``."""
    if not _pg_available():
        pytest.fail(f"Postgres not reachable at {PG_ADMIN_URL} (run .ci/run, which starts it)")
    import psycopg
    import redis

    name = f"ruc_it_val_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    from service.db.migrate import upgrade_head

    upgrade_head(url)
    broker = f"{REDIS_HOST}/{1 + os.getpid() % 9}"
    redis.Redis.from_url(broker).flushdb()
    data_dir = tmp_path_factory.mktemp("ruc-val")
    env = service_env(
        data_dir, url, broker, RUC_MAX_ATTEMPTS=str(MAX_ATTEMPTS), RUC_REQUEUE_SECONDS=str(REQUEUE_SECONDS)
    )
    svc = Services(env=env, data_dir=data_dir, log_dir=data_dir / "logs", database_url=url)
    svc.key = create_key(url)
    try:
        svc.start_worker("cpu")
        svc.start_api()
        yield svc
    finally:
        svc.stop()
        redis.Redis.from_url(broker).flushdb()
        dispose_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _validation_child() -> tuple[int, int] | None:
    """(pid, pool pid) of a running validation child: a child of a validation zygote, itself a child
    of the Celery pool process that asked for the check (this stack's only cpu worker)."""
    parents: dict[int, int] = {}
    zygotes: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if b"worker.validation_zygote" in cmdline:
            zygotes.add(int(entry.name))
    for pid, parent in parents.items():
        if parent in zygotes:
            return pid, parents[parent]
    return None


def _attempts(url: str, upload_id: str) -> tuple[str, int, str | None]:
    with session_scope(url) as s:
        row = job_runs.get_dataset(s, upload_id)
        assert row is not None
        return row.status, row.validation_attempts, row.reason


def test_a_validation_that_kills_its_worker_ends_invalid_after_max_attempts(stack: Services) -> None:
    with stack.client() as client:
        row = upload(client, "/v1/datasets", "d.npz", digits_npz(n=300))
        started = time.monotonic()
        # 1st attempt: the whole worker (main process, pool and child) is SIGKILLed mid-validation;
        # the message stays unacked and only the recovery sweep of the next worker sends it again.
        wait_for(_validation_child, 60, 0.02, "the first validation child")
        stack.workers["cpu"].kill_group(signal.SIGKILL)
        stack.workers["cpu"].popen.wait(timeout=10)
        assert _attempts(stack.database_url, row["id"])[:2] == ("validating", 1)
        stack.start_worker("cpu")
        # 2nd attempt: only the pool process dies (what an OOM kill does); Celery's main process
        # rejects the message with requeue (reject_on_worker_lost) and the broker hands it out again.
        _, pool_pid = wait_for(_validation_child, 60, 0.02, "the second validation child")
        os.kill(pool_pid, signal.SIGKILL)
        final = wait_upload(client, "/v1/datasets", row, timeout=60)
        print(f"validation killed twice: {final['status']} after {time.monotonic() - started:.1f} s")
        assert final["status"] == "invalid"
        assert final["reason"] == f"validation crashed {MAX_ATTEMPTS} times"
        assert _attempts(stack.database_url, row["id"])[1] == MAX_ATTEMPTS
        # The service goes on: the next upload validates.
        good = wait_upload(client, "/v1/datasets", upload(client, "/v1/datasets", "g.npz", digits_npz(n=50)))
        assert good["status"] == "ready"


def test_an_archive_with_undecodable_member_names_ends_invalid_with_a_readable_reason(
    stack: Services, tmp_path: Path
) -> None:
    content = undecodable_tar(tmp_path / "names.tar").read_bytes()
    with stack.client() as client:
        row = upload(client, "/v1/datasets", "names.tar", content)
        final = wait_upload(client, "/v1/datasets", row, timeout=60)
    assert final["status"] == "invalid"
    assert final["reason"].startswith(UNDECODABLE_REASON), final["reason"]


_REFUSE_OUTCOMES = """
CREATE FUNCTION refuse_outcomes() RETURNS trigger AS $$
BEGIN
  IF NEW.status <> 'validating' THEN RAISE EXCEPTION 'outcome refused (test trigger)'; END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_outcomes BEFORE UPDATE ON datasets FOR EACH ROW EXECUTE FUNCTION refuse_outcomes();
"""


def test_a_failed_outcome_write_is_retried_not_acknowledged(stack: Services) -> None:
    import psycopg

    conninfo = stack.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_REFUSE_OUTCOMES)
        try:
            with stack.client() as client:
                row = upload(client, "/v1/datasets", "d.npz", digits_npz(n=50))
                log = stack.workers["cpu"]
                wait_for(lambda: f"{row['id']}: validation not recorded" in log.log(), 60, 0.2, "a retry")
                assert _attempts(stack.database_url, row["id"])[:2] == ("validating", 1)
        finally:
            conn.execute("DROP TRIGGER refuse_outcomes ON datasets; DROP FUNCTION refuse_outcomes()")
    with stack.client() as client:
        final = wait_upload(client, "/v1/datasets", row, timeout=30)
    assert final["status"] == "ready"
    assert final["facts"]["count"] == 50
    # The retry wrote the outcome it carried: no second validation, no attempt counted.
    assert _attempts(stack.database_url, row["id"])[1] == 1
