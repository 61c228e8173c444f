"""API test fixtures: the app over a migrated SQLite file and a migrated Postgres schema.

Postgres: database ``test`` on 127.0.0.1 (trust auth); each test session gets its own schema, so runs
by other helpers sharing the database never see these tables. The broker is a filesystem folder under
the test's temp dir: tasks are only enqueued, and the tests read the message files.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import Keys
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from api.auth import key_cache
from api.main import create_app
from service.db.crud.api_keys import create_key
from service.db.migrate import upgrade_head
from service.db.models import Base
from service.db.session import dispose_engines, session_scope
from service.settings import Settings

PG_BASE_URL = os.environ.get("RUC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_available() -> bool:
    try:
        engine = create_engine(PG_BASE_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'api.sqlite3'}"
    upgrade_head(url)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not _postgres_available():
        pytest.fail("Postgres not reachable at " + PG_BASE_URL + " (run .ci/run, which starts it)")
    schema = f"api_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    try:
        upgrade_head(url)
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    yield url
    _truncate(url)


def _truncate(url: str) -> None:
    engine: Engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url="filesystem://",
        max_upload_bytes=4096,
        upload_chunk_bytes=1024,
        api_key_cache_seconds=5.0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    key_cache.clear()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c
    key_cache.clear()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    with session_scope(settings.database_url) as session:
        row_a, key_a = create_key(session, "owner a")
        row_b, key_b = create_key(session, "owner b")
        ids = row_a.id, row_b.id
    return Keys({"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}, *ids)
