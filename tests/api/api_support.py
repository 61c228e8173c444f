"""Helpers for the API tests (imported as ``api_support``: pytest puts this folder on sys.path)."""

from __future__ import annotations

import base64
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import update

from service.db.models import Checkpoint, Dataset
from service.db.session import session_scope
from service.settings import Settings

# Starlette's TestClient warns that it is moving to httpx2; noise for these tests. Set before the import.
warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")

from fastapi.testclient import TestClient  # noqa: E402


@dataclass
class Keys:
    a: dict[str, str]  # headers of owner A
    b: dict[str, str]  # headers of owner B
    a_owner: str
    b_owner: str


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
