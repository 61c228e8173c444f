from __future__ import annotations

import hashlib
from pathlib import Path

from api_support import Keys, broker_tasks, npz_bytes, upload
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db.models import Checkpoint, Dataset
from service.db.session import session_scope
from service.settings import Settings

PROBLEM = "application/problem+json"


def _stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.storage_dir.rglob("*") if p.is_file()]


def _rows(settings: Settings, model: type[Dataset] | type[Checkpoint]) -> int:
    with session_scope(settings.database_url) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_dataset_upload_is_stored_hashed_and_enqueued(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    data = npz_bytes(5)
    ds = upload(client, keys.a, name="../../etc/My Data?.NPZ", data=data)
    assert ds["status"] == "validating"
    assert ds["size"] == len(data)
    assert ds["sha256"] == hashlib.sha256(data).hexdigest()
    assert "/" not in ds["filename"] and ".." not in ds["filename"].split(".")[0]
    # Stored under a fixed name, never the client's.
    files = _stored_files(settings)
    assert [f.relative_to(settings.storage_dir).as_posix() for f in files] == [
        f"datasets/{ds['id']}/data.npz"
    ]
    assert files[0].read_bytes() == data
    assert broker_tasks(settings, "cpu") == [("uploads.validate_dataset", [ds["id"]])]
    got = client.get(f"/v1/datasets/{ds['id']}", headers=keys.a).json()
    assert got["sha256"] == ds["sha256"] and got["status"] == "validating"


def test_tar_gz_suffix_is_kept(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = upload(client, keys.a, name="images.tar.gz", data=b"\x1f\x8b" + b"0" * 100)
    assert (settings.storage_dir / "datasets" / ds["id"] / "data.tar.gz").is_file()
    ck = upload(client, keys.a, name="scan.pth.tar", data=b"0" * 100, route="/v1/checkpoints")
    assert (settings.storage_dir / "checkpoints" / ck["id"] / "model.pth.tar").is_file()
    assert ck["kind"] is None
    assert broker_tasks(settings, "cpu")[-1] == ("uploads.validate_checkpoint", [ck["id"]])


def test_upload_over_limit_is_413_and_leaves_nothing(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    limit = settings.max_upload_bytes
    # One byte over: passes the Content-Length pre-check (multipart slack), caught while streaming.
    for size in (limit + 1, limit * 40):
        r = client.post("/v1/datasets", headers=keys.a, files={"file": ("big.npz", b"\0" * size)})
        assert r.status_code == 413, size
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["errors"][0]["field"] == "file"
    assert _stored_files(settings) == []
    assert [p for p in settings.storage_dir.rglob("*") if p.is_dir() and p.parent.name == "datasets"] == []
    assert _rows(settings, Dataset) == 0
    assert broker_tasks(settings, "cpu") == []
    # Exactly at the limit is fine.
    assert upload(client, keys.a, data=b"\0" * limit)["size"] == limit


def test_wrong_suffix_names_file(client: TestClient, keys: Keys, settings: Settings) -> None:
    for route, name in [("/v1/datasets", "x.exe"), ("/v1/datasets", "npz"), ("/v1/checkpoints", "m.npz")]:
        r = client.post(route, headers=keys.a, files={"file": (name, b"abc")})
        assert r.status_code == 415, (route, name)
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["errors"][0]["field"] == "file"
    assert _stored_files(settings) == []
    assert _rows(settings, Dataset) == _rows(settings, Checkpoint) == 0


def test_missing_or_empty_file_part(client: TestClient, keys: Keys, settings: Settings) -> None:
    cases = [
        {"data": {"name": "x"}},  # urlencoded form, no multipart at all
        {"files": {"other": ("a.npz", b"abc")}},  # multipart without a 'file' part
        {"files": {"file": ("a.npz", b"")}},  # empty file
        {"content": b"not multipart", "headers": {"content-type": "multipart/form-data; boundary=zzz"}},
    ]
    for case in cases:
        headers = {**keys.a, **case.pop("headers", {})}
        r = client.post("/v1/datasets", headers=headers, **case)
        assert r.status_code in (415, 422), (case, r.status_code, r.text)
        assert r.json()["errors"][0]["field"] == "file"
    assert _stored_files(settings) == []


def test_list_and_delete_datasets(client: TestClient, keys: Keys, settings: Settings) -> None:
    ids = [upload(client, keys.a)["id"] for _ in range(3)]
    page = client.get("/v1/datasets", headers=keys.a, params={"limit": 2}).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get("/v1/datasets", headers=keys.a, params={"limit": 2, "after": page["next_after"]}).json()
    assert [d["id"] for d in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert client.delete(f"/v1/datasets/{ids[0]}", headers=keys.a).status_code == 204
    assert client.get(f"/v1/datasets/{ids[0]}", headers=keys.a).status_code == 404
    assert not (settings.storage_dir / "datasets" / ids[0]).exists()
    assert (settings.storage_dir / "datasets" / ids[1] / "data.npz").is_file()


def test_rfc5987_filename_and_chunked_body(client: TestClient, keys: Keys, settings: Settings) -> None:
    data = npz_bytes(3)
    body = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''caf%C3%A9.npz\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XyZ--\r\n"
    )

    def chunks():  # no Content-Length: the streaming limit alone protects the server
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    r = client.post(
        "/v1/datasets",
        headers={**keys.a, "content-type": "multipart/form-data; boundary=XyZ"},
        content=chunks(),
    )
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "cafe.npz" and r.json()["size"] == len(data)
    assert (settings.storage_dir / "datasets" / r.json()["id"] / "data.npz").read_bytes() == data
    big = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.npz"\r\n\r\n'

    def too_many():
        yield big
        for _ in range(100):
            yield b"\0" * 1000

    r = client.post(
        "/v1/datasets",
        headers={**keys.a, "content-type": "multipart/form-data; boundary=XyZ"},
        content=too_many(),
    )
    assert r.status_code == 413
    assert len(list((settings.storage_dir / "datasets").iterdir())) == 1
