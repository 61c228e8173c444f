"""The API on the s3 backend (moto's server over HTTP): uploads stream into the bucket as multipart
uploads, artifact downloads stream out of it, deletes remove the objects, an unreachable store is a 503
naming nothing internal. Nothing is written under the local storage folder."""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from pathlib import Path

import pytest
from api_support import Keys, ready_dataset, submit, upload
from fastapi.testclient import TestClient
from s3_support import MotoS3
from sqlalchemy import func, select, update

from api.main import create_app
from service.db.models import Artifact, Dataset, Job, utcnow
from service.db.session import session_scope
from service.settings import Settings
from service.storage import get_storage
from service.storage.base import CHECK_TIMEOUT_S

MiB = 1024**2
PREFIX = "ruc/api-test"
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    return moto.new_bucket()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, moto: MotoS3, bucket: str) -> Settings:
    env = moto.env(bucket, prefix=PREFIX)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url="filesystem://",
        max_upload_bytes=6 * MiB,
        s3_part_bytes=5 * MiB,
        **{k.removeprefix("RUC_").lower(): v for k, v in env.items()},
    )


def _local_files(settings: Settings) -> list[Path]:
    return [p for p in settings.data_dir.rglob("*") if p.is_file() and "broker" not in p.parts]


def test_uploads_stream_into_the_bucket_and_deletes_remove_them(
    client: TestClient, keys: Keys, settings: Settings, moto: MotoS3, bucket: str
) -> None:
    data = b"\x93NUMPY" + bytes(range(256)) * (6 * MiB // 256 - 1)  # over one part: a multipart upload
    ds = upload(client, keys.a, data=data)
    name = f"{PREFIX}/datasets/{ds['id']}/data.npz"
    assert moto.keys(bucket) == [name]
    stored = moto.client().get_object(Bucket=bucket, Key=name)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == ds["sha256"] == hashlib.sha256(data).hexdigest()
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(Dataset.path).where(Dataset.id == ds["id"])) == f"datasets/{ds['id']}/data.npz"

    r = client.post("/v1/datasets", headers=keys.a, files={"file": ("big.npz", b"\0" * (6 * MiB + 1))})
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file"
    assert moto.keys(bucket) == [name] and moto.pending_uploads(bucket) == 0  # the parts were aborted

    assert client.delete(f"/v1/datasets/{ds['id']}", headers=keys.a).status_code == 204
    assert moto.keys(bucket) == []
    assert _local_files(settings) == []  # nothing under the local storage folder, ever
    assert not settings.storage_dir.exists()


def test_artifacts_download_from_the_bucket_and_go_with_their_job(
    client: TestClient, keys: Keys, settings: Settings, moto: MotoS3, bucket: str
) -> None:
    ds = ready_dataset(client, settings, keys.a)
    job_id = submit(client, keys.a, ds).json()["id"]
    content = b"index,base_cluster\n" + b"".join(b"%d,%d\n" % (i, i % 10) for i in range(200_000))
    key = f"jobs/{job_id}/artifacts/1/assignments.csv"
    get_storage(settings).put_bytes(key, content)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="succeeded", finished_at=utcnow()))
        s.add(
            Artifact(
                job_id=job_id,
                name="assignments.csv",
                path=key,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                media_type="text/csv",
            )
        )
        gone = f"jobs/{job_id}/artifacts/1/gone.csv"
        s.add(
            Artifact(
                job_id=job_id, name="gone.csv", path=gone, size=1, sha256="0" * 64, media_type="text/csv"
            )
        )
    r = client.get(f"/v1/jobs/{job_id}/artifacts/assignments.csv", headers=keys.a)
    assert r.status_code == 200 and r.content == content
    assert r.headers["content-length"] == str(len(content)) and r.headers["content-type"].startswith(
        "text/csv"
    )
    assert r.headers["content-disposition"] == 'attachment; filename="assignments.csv"'
    missing = client.get(f"/v1/jobs/{job_id}/artifacts/gone.csv", headers=keys.a)
    assert missing.status_code == 404 and missing.json()["code"] == "not-found"

    assert client.delete(f"/v1/jobs/{job_id}", headers=keys.a).status_code == 204
    assert moto.keys(bucket) == [f"{PREFIX}/datasets/{ds}/data.npz"]
    assert _local_files(settings) == []


def test_an_unreachable_store_is_a_503_that_names_nothing_internal(keys: Keys, settings: Settings) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}"})
    started = time.monotonic()
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        r = client.post("/v1/datasets", headers=keys.a, files={"file": ("d.npz", b"\x93NUMPY" * 100)})
    print(f"\n503 after {time.monotonic() - started:.1f} s (boto3's retries)")
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "storage-unavailable" and r.headers["retry-after"] == "5"
    assert str(port) not in r.text and "Connect" not in r.text and "bucket" not in r.text.lower()
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_readyz_heads_the_bucket_and_names_the_store_when_it_does_not_answer(
    client: TestClient, settings: Settings, moto: MotoS3, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/readyz").status_code == 200
    moto.client().delete_bucket(Bucket=bucket)  # the endpoint answers, the bucket is gone
    with caplog.at_level(logging.WARNING):
        gone = client.get("/readyz")
    assert gone.status_code == 503 and gone.headers["content-type"] == "application/problem+json"
    assert gone.json()["code"] == "not-ready"
    assert gone.json()["detail"] == "not ready: storage unreachable; the service log has the reason"
    assert bucket not in gone.text and f"head of bucket {bucket}" in caplog.text

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}"})
    with TestClient(create_app(down), raise_server_exceptions=False) as closed:
        started = time.monotonic()
        r = closed.get("/readyz")
        took = time.monotonic() - started
    print(f"\nreadyz on a closed S3 port: {r.status_code} after {took:.2f} s")
    assert r.status_code == 503 and "storage" in r.json()["detail"] and str(port) not in r.text
    assert took < 2 * CHECK_TIMEOUT_S + 1  # one bounded attempt, not the data client's retries
