"""One contract, both stores: ``LocalStorage`` on a folder and ``S3Storage`` on a real S3 HTTP endpoint
(moto's server as a subprocess, tests/s3_support.py), built the way the service builds them
(``get_storage(Settings(...))``)."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_support import MotoS3

from service.settings import Settings
from service.storage import (
    InvalidKey,
    LocalStorage,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    get_storage,
)
from service.storage.s3 import S3Storage

MiB = 1024**2
PART = 5 * MiB  # S3's smallest part, the store's smallest s3_part_bytes


@pytest.fixture(scope="module")
def bucket(moto: MotoS3) -> str:
    return moto.new_bucket()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        moto: MotoS3 = request.getfixturevalue("moto")
        env = moto.env(request.getfixturevalue("bucket"), prefix=f"/t-{uuid.uuid4().hex[:8]}/")
        settings = Settings(
            data_dir=tmp_path / "data",
            s3_part_bytes=PART,
            **{k.removeprefix("RUC_").lower(): v for k, v in env.items()},
        )
    store = get_storage(settings)
    assert store.backend == request.param
    return store


def _chunks(total: int, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, total, size):
        yield bytes([i // size % 251]) * min(size, total - i)


def test_write_read_stat_and_overwrite(store: Storage) -> None:
    key = "datasets/ds_1/data.npz"
    assert store.stat(key) is None and not store.exists(key)
    assert store.put_stream(key, [b"hello ", b"", b"world"]) == 11
    assert store.read_bytes(key) == b"hello world"
    info = store.stat(key)
    assert info is not None and info.key == key and info.size == 11 == store.size(key)
    assert abs(time.time() - info.modified) < 120
    assert list(store.iter_chunks(key, 4)) == [b"hell", b"o wo", b"rld"]
    store.put_bytes(key, b"new")  # an object is replaced whole
    assert store.read_bytes(key) == b"new" and store.size(key) == 3


def test_a_streamed_write_holds_one_part_and_stops_at_its_cap(
    store: Storage, request: pytest.FixtureRequest
) -> None:
    total = 16 * MiB + 7
    expected = hashlib.sha256(b"".join(_chunks(total))).hexdigest()
    tracemalloc.start()
    try:
        size = store.put_stream("jobs/j1/artifacts/1/big.bin", _chunks(total))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{store.backend}: streamed {total / MiB:.1f} MiB, peak traced memory {peak / MiB:.1f} MiB")
    assert size == total and store.size("jobs/j1/artifacts/1/big.bin") == total
    got = hashlib.sha256(b"".join(store.iter_chunks("jobs/j1/artifacts/1/big.bin"))).hexdigest()
    assert got == expected
    # At most one part buffered (S3) plus a chunk in flight: far below the object (measured: local
    # 2.0 MiB, S3 6.2 MiB for 16 MiB in 5 MiB parts).
    assert peak < 2 * PART + MiB < total

    with (
        pytest.raises(ObjectTooLarge) as err,
        store.writer("datasets/ds_2/data.npz", max_bytes=6 * MiB) as out,
    ):
        for chunk in _chunks(8 * MiB):  # the first part (5 MiB) is already sent when the cap is hit
            out.write(chunk)
    assert err.value.limit == 6 * MiB
    assert store.stat("datasets/ds_2/data.npz") is None and store.list("datasets") == []
    if isinstance(store, S3Storage):
        moto: MotoS3 = request.getfixturevalue("moto")
        assert moto.pending_uploads(store.bucket) == 0


def test_an_aborted_or_uncommitted_write_leaves_nothing(
    store: Storage, request: pytest.FixtureRequest
) -> None:
    with store.writer("checkpoints/ck_1/model.pt") as out:
        out.write(b"x" * (PART + 1))  # past one part: a multipart upload is under way on S3
    assert store.stat("checkpoints/ck_1/model.pt") is None
    out = store.writer("checkpoints/ck_2/model.pt")
    out.write(b"y" * 10)
    out.abort()
    out.abort()  # idempotent
    with pytest.raises(StorageError):
        out.write(b"more")
    assert store.list("checkpoints") == []
    if isinstance(store, S3Storage):
        moto: MotoS3 = request.getfixturevalue("moto")
        assert moto.pending_uploads(store.bucket) == 0
    empty = store.writer("checkpoints/ck_3/model.pt")
    assert empty.commit() == 0 and store.read_bytes("checkpoints/ck_3/model.pt") == b""


def test_put_file_and_local_copy(store: Storage, tmp_path: Path) -> None:
    src = tmp_path / "result.json"
    src.write_bytes(b'{"acc": 0.9}')
    assert store.put_file("jobs/j1/artifacts/1/result.json", src) == 12 and src.exists()
    assert store.put_file("jobs/j1/artifacts/1/moved.json", src, move=True) == 12 and not src.exists()
    assert store.read_bytes("jobs/j1/artifacts/1/moved.json") == b'{"acc": 0.9}'

    cache = tmp_path / "cache"
    copy = store.local_copy("jobs/j1/artifacts/1/result.json", cache)
    assert copy.read_bytes() == b'{"acc": 0.9}'
    info = store.stat("jobs/j1/artifacts/1/result.json")
    assert info is not None
    if store.local_path("jobs/j1/artifacts/1/result.json") is None:  # remote: a copy in the cache
        assert copy == cache / "jobs/j1/artifacts/1/result.json"
        # The object's time: a later attempt's copy fingerprints the same (size, mtime).
        assert copy.stat().st_mtime == info.modified
    else:  # local: the store's own file, nothing cached
        assert copy == store.local_path("jobs/j1/artifacts/1/result.json") and not cache.exists()
    with pytest.raises(ObjectNotFound):
        store.local_copy("jobs/j1/artifacts/1/missing.json", cache)
    with pytest.raises(ObjectNotFound):
        store.open("jobs/j1/nothing")


def test_list_usage_and_delete_respect_folder_boundaries(store: Storage) -> None:
    for key, size in (("jobs/a/x/1", 3), ("jobs/a/x/2", 4), ("jobs/ab/3", 5), ("jobs/a/4", 6)):
        store.put_bytes(key, b"z" * size)
    assert [o.key for o in store.list("jobs/a")] == ["jobs/a/4", "jobs/a/x/1", "jobs/a/x/2"]
    assert [(o.key, o.size) for o in store.list("jobs/a/x/")] == [("jobs/a/x/1", 3), ("jobs/a/x/2", 4)]
    assert store.usage("jobs/a") == 13 and store.usage("jobs/none") == 0
    assert store.delete_prefix("jobs/a/x") == 2
    store.delete("jobs/a/4")
    store.delete("jobs/a/4")  # a missing object is fine
    assert [o.key for o in store.list("jobs")] == ["jobs/ab/3"]
    assert store.delete_prefix("jobs/a") == 0
    assert store.read_bytes("jobs/ab/3") == b"zzzzz"


BAD_KEYS = ["", "../x", "/abs", "a//b", "a/../b", ".hidden", "a/.b", "a\\b", "a/b/", "a b", "x" * 501]


def test_keys_that_could_leave_the_store_are_refused(store: Storage, tmp_path: Path) -> None:
    for key in BAD_KEYS:
        calls = [
            lambda k=key: store.writer(k),
            lambda k=key: store.put_bytes(k, b"x"),
            lambda k=key: store.open(k),
            lambda k=key: store.stat(k),
            lambda k=key: store.delete(k),
            lambda k=key: store.local_copy(k, tmp_path),
        ]
        if not key.endswith("/"):
            calls += [lambda k=key: store.list(k), lambda k=key: store.delete_prefix(k)]
        for call in calls:
            with pytest.raises(InvalidKey):
                call()
    with pytest.raises(InvalidKey):  # never the whole store
        store.delete_prefix("")


def test_local_store_refuses_symlinks_out_hides_partial_files_and_prunes_folders(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (tmp_path / "store" / "datasets").mkdir(parents=True)
    os.symlink(outside, tmp_path / "store" / "datasets" / "ds_1")
    with pytest.raises(InvalidKey):
        store.open("datasets/ds_1/secret")
    out = store.writer("jobs/j/artifacts/1/a.csv")
    out.write(b"partial")
    assert store.list("jobs") == [] and store.stat("jobs/j/artifacts/1/a.csv") is None
    out.commit()
    assert [o.key for o in store.list("jobs")] == ["jobs/j/artifacts/1/a.csv"]
    store.delete("jobs/j/artifacts/1/a.csv")
    assert not (tmp_path / "store" / "jobs").exists() and (tmp_path / "store").is_dir()


def test_an_unreachable_s3_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    import boto3
    from botocore.config import Config

    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = S3Storage(client, bucket="nowhere", part_bytes=PART)
    calls = [
        lambda: store.stat("a/b"),
        lambda: store.open("a/b"),
        lambda: store.list("a"),
        lambda: store.put_bytes("a/b", b"x"),
        lambda: store.delete_prefix("a"),
        lambda: store.local_copy("a/b", tmp_path),
        store.check,
    ]
    for call in calls:
        with pytest.raises(StorageError):
            call()


def test_s3_settings_need_a_bucket_and_normalise_the_prefix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RUC_S3_BUCKET"):
        Settings(data_dir=tmp_path, storage_backend="s3")
    settings = Settings(data_dir=tmp_path, storage_backend="s3", s3_bucket="b", s3_prefix="/ruc/prod/")
    assert settings.s3_prefix == "ruc/prod"
    assert "hunter2" not in repr(Settings(data_dir=tmp_path, s3_secret_access_key="hunter2"))
