"""API test fixtures: the app over a migrated SQLite file and a migrated Postgres schema.

Postgres: database ``test`` on 127.0.0.1 (trust auth); each test session gets its own schema, so runs
by other helpers sharing the database never see these tables. The broker is a filesystem folder under
the test's temp dir: tasks are only enqueued, and the tests read the message files.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import Engine

from api.auth import key_cache
from api.db.crud.api_keys import create_key
from api.db.migrate import upgrade_head
from api.db.models import Base, Checkpoint, Dataset
from api.db.session import dispose_engines, session_scope
from api.settings import Settings

warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")

from fastapi.testclient import TestClient  # noqa: E402  (after the warning filter)

from api.main import create_app  # noqa: E402

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
        pytest.skip("Postgres not reachable at " + PG_BASE_URL)
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


@dataclass
class Keys:
    a: dict[str, str]  # headers of owner A
    b: dict[str, str]  # headers of owner B
    a_owner: str
    b_owner: str


@pytest.fixture
def keys(settings: Settings) -> Keys:
    with session_scope(settings.database_url) as session:
        row_a, key_a = create_key(session, "owner a")
        row_b, key_b = create_key(session, "owner b")
        ids = row_a.id, row_b.id
    return Keys({"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}, *ids)


def mark_ready(
    settings: Settings, model: type[Dataset] | type[Checkpoint], row_id: str, **values: object
) -> None:
    """What the worker's validation task would do: status ready plus facts/kind/info."""
    with session_scope(settings.database_url) as session:
        session.execute(update(model).where(model.id == row_id).values(status="ready", **values))


def broker_messages(settings: Settings, queue: str) -> list[Path]:
    folder = Path(settings.broker_transport_options()["data_folder_out"])
    return sorted(folder.glob(f"*.{queue}.msg"))


def broker_tasks(settings: Settings, queue: str) -> list[tuple[str, list[object]]]:
    """(task name, args) of every message waiting on ``queue``, oldest first."""
    out = []
    for path in broker_messages(settings, queue):
        message = json.loads(path.read_text())
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args))
    return out


def npz_bytes(n: int = 6) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((n, 4, 4, 1), np.uint8))
    return buf.getvalue()


def upload(
    client: TestClient,
    headers: dict[str, str],
    *,
    name: str = "d.npz",
    data: bytes | None = None,
    route: str = "/v1/datasets",
) -> dict:
    r = client.post(route, headers=headers, files={"file": (name, npz_bytes() if data is None else data)})
    assert r.status_code == 201, r.text
    return r.json()


def ready_dataset(client: TestClient, settings: Settings, headers: dict[str, str], **facts: object) -> str:
    ds = upload(client, headers)
    mark_ready(settings, Dataset, ds["id"], facts={"count": 6, "has_labels": False, **facts})
    return ds["id"]


def submit(client: TestClient, headers: dict[str, str], dataset_id: str, **extra: object):
    return client.post(
        "/v1/jobs", headers=headers, json={"dataset_id": dataset_id, "num_clusters": 2, **extra}
    )
