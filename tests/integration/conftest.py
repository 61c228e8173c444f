"""Fixtures of the integration suite: a fresh Postgres database per session (migrated once), a private
Redis database number, and the API plus a gpu and a cpu Celery worker as subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from integration_support import (
    REDIS_HOST,
    Services,
    _redis_available,
    create_key,
    fresh_database,
    service_env,
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's database, shared with the ``services`` workers (whose sweepers act on it)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def private_pg_url() -> Iterator[str]:
    """A database of the module's own: no live worker's sweeper can take its rows."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of its own (emptied before and after), so queues never mix."""
    if not _redis_available():
        pytest.fail(f"Redis not reachable at {REDIS_HOST} (run .ci/run, which starts it)")
    import redis

    db = 10 + (os.getpid() % 6)
    url = f"{REDIS_HOST}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def services(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("ruc-data")
    svc = Services(
        env=service_env(data_dir, pg_url, redis_url),
        data_dir=data_dir,
        log_dir=data_dir / "logs",
        database_url=pg_url,
    )
    svc.key = create_key(pg_url)
    try:
        svc.start_worker("gpu")
        svc.start_worker("cpu")
        svc.start_api()
        yield svc
    finally:
        svc.stop()
