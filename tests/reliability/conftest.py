"""Fixtures of the reliability suite: the API and a gpu and a cpu Celery worker (as subprocesses) on a
Postgres cluster and a redis-server of the suite's own, which its tests kill, stop and restart.

The helpers of the integration and API suites are reused from tests/integration and tests/api (put
on the path here, since this folder is no package of theirs). Nothing here touches the machine's
shared Postgres or Redis.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("integration", "api"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))

from integration_support import (  # noqa: E402
    Services,
    create_key,
    digits_npz,
    service_env,
    upload,
    wait_upload,
)
from private_instances import PrivatePostgres, PrivateRedis  # noqa: E402

# Ten SIGKILLs of one job must not exhaust it: every kill costs one attempt.
FAULT_MAX_ATTEMPTS = 12
# Images of the suite's dataset: RUC epochs of a few tenths of a second on one core.
FAULT_DATASET_IMAGES = 200


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[PrivatePostgres]:
    """A migrated cluster of the suite's own (initdb'd for the session, removed after it)."""
    from service.db.migrate import upgrade_head
    from service.db.session import dispose_engines

    cluster = PrivatePostgres()
    try:
        cluster.start()
        upgrade_head(cluster.url)
        yield cluster
    finally:
        dispose_engines()
        cluster.remove()


@pytest.fixture(scope="session")
def fault_stack(
    own_postgres: PrivatePostgres, own_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("ruc-faults")
    env = service_env(data_dir, own_postgres.url, own_redis.url, RUC_MAX_ATTEMPTS=str(FAULT_MAX_ATTEMPTS))
    svc = Services(env=env, data_dir=data_dir, log_dir=data_dir / "logs", database_url=own_postgres.url)
    svc.key = create_key(own_postgres.url, "reliability")
    try:
        svc.start_worker("gpu")
        svc.start_worker("cpu")
        svc.start_api()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def fault_dataset_npz() -> bytes:
    """The first FAULT_DATASET_IMAGES digits with labels, as the service's npz."""
    return digits_npz(n=FAULT_DATASET_IMAGES)


@pytest.fixture(scope="session")
def fault_dataset(fault_stack: Services, fault_dataset_npz: bytes) -> str:
    """Id of the ready dataset uploaded from ``fault_dataset_npz``."""
    with fault_stack.client() as client:
        sent = upload(client, "/v1/datasets", "digits.npz", fault_dataset_npz)
        row = wait_upload(client, "/v1/datasets", sent)
    assert row["status"] == "ready", row
    assert row["facts"]["count"] == FAULT_DATASET_IMAGES
    return str(row["id"])
