"""``S3Storage``: the store as an S3-compatible bucket (AWS S3, MinIO, Ceph RGW ...), through boto3.

Keys are ``<s3_prefix>/<key>``. A streamed write holds at most one part (``s3_part_bytes``) in memory:
an object that stays under one part is a single PUT on commit, a larger one a multipart upload whose
parts go up as they fill, completed on commit and aborted on error (no part outlives a failed upload).
Every botocore failure other than a missing key becomes ``StorageError``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from service.storage.base import (
    CHECK_TIMEOUT_S,
    ObjectInfo,
    ObjectNotFound,
    ObjectWriter,
    Storage,
    StorageError,
)
from service.storage.layout import check_key, folder_prefix

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
# DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES


def _failure(what: str, exc: Exception) -> StorageError:
    return StorageError(f"s3 {what} failed: {type(exc).__name__}: {exc}")


_sessions: dict[int, Any] = {}


def _session() -> Any:
    """One boto3 session per process: each new session loads the S3 service model again (~0.5 s)."""
    import boto3

    return _sessions.setdefault(os.getpid(), boto3.session.Session())


def s3_client(settings: Settings, *, probe: bool = False) -> Any:
    """A boto3 S3 client from the settings; empty credentials fall back to boto3's default chain.
    ``probe``: for readiness, one attempt of at most CHECK_TIMEOUT_S to connect and to read (the data
    client retries for a minute, which would hold /readyz as long). Called under ``get_storage``'s
    lock: boto3 sessions are not thread-safe."""
    from botocore.config import Config

    config = Config(
        connect_timeout=CHECK_TIMEOUT_S if probe else 5,
        read_timeout=CHECK_TIMEOUT_S if probe else 60,
        retries={"max_attempts": 1 if probe else 4, "mode": "standard"},
        # A custom endpoint (MinIO and the like) is reached by path: bucket names need no DNS there.
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
    )
    secret = settings.s3_secret_access_key.get_secret_value()
    return _session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=secret or None,
        config=config,
    )


class _MultipartWriter(ObjectWriter):
    def __init__(self, store: S3Storage, key: str, max_bytes: int | None) -> None:
        super().__init__(key, max_bytes)
        self._store = store
        self._name = store.name(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= self._store.part_bytes:
            self._flush_part()

    def _flush_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._name)["UploadId"]
            number = len(self._parts) + 1
            answer = client.upload_part(
                Bucket=bucket,
                Key=self._name,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=self._buffer,
            )
        except Exception as exc:
            self.abort()
            raise _failure(f"upload of {self.key}", exc) from exc
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer = bytearray()

    def _commit(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                client.put_object(Bucket=bucket, Key=self._name, Body=self._buffer)
            else:
                if self._buffer:
                    self._flush_part()
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._name,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except StorageError:
            raise
        except Exception as exc:
            self._abort()
            raise _failure(f"upload of {self.key}", exc) from exc
        self._buffer = bytearray()

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._name, UploadId=upload_id
            )
        except Exception:  # the bucket's lifecycle rule for incomplete uploads is the backstop
            log.exception("abort of the multipart upload of %s failed", self.key)


class S3Storage(Storage):
    backend = "s3"

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str = "",
        part_bytes: int = 8 << 20,
        probe_client: Any = None,
    ) -> None:
        self.client = client
        self.probe_client = probe_client or client  # what check() asks: bounded, see s3_client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes

    def name(self, key: str) -> str:
        """The object's name in the bucket."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def writer(self, key: str, *, max_bytes: int | None = None) -> ObjectWriter:
        return _MultipartWriter(self, key, max_bytes)

    def put_file(self, key: str, path: Path, *, move: bool = False) -> int:
        from boto3.s3.transfer import TransferConfig

        name = self.name(key)
        size = Path(path).stat().st_size
        config = TransferConfig(
            multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes, max_concurrency=4
        )
        try:
            self.client.upload_file(str(path), self.bucket, name, Config=config)
        except Exception as exc:
            raise _failure(f"upload of {key}", exc) from exc
        if move:
            Path(path).unlink(missing_ok=True)
        return size

    def open(self, key: str) -> BinaryIO:
        name = self.name(key)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from None
            raise _failure(f"read of {key}", exc) from exc
        return answer["Body"]

    def stat(self, key: str) -> ObjectInfo | None:
        name = self.name(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise _failure(f"stat of {key}", exc) from exc
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    def list(self, prefix: str) -> list[ObjectInfo]:
        start = self.name(folder_prefix(prefix).rstrip("/")) + "/"
        out: list[ObjectInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            ):
                for obj in page.get("Contents", []):
                    out.append(
                        ObjectInfo(self._key(obj["Key"]), int(obj["Size"]), obj["LastModified"].timestamp())
                    )
        except Exception as exc:
            raise _failure(f"list of {prefix}", exc) from exc
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        name = self.name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            if not _is_missing(exc):
                raise _failure(f"delete of {key}", exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": self.name(k)} for k in keys[i : i + _DELETE_BATCH]]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise _failure(f"delete of {prefix}", exc) from exc
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(f"s3 delete of {first.get('Key')} failed: {first.get('Code')}")
        return len(keys)

    def local_copy(self, key: str, cache_dir: Path) -> Path:
        info = self.stat(key)
        if info is None:
            raise ObjectNotFound(key)
        dest = Path(cache_dir) / key
        try:
            self.copy_to(key, dest)
        except (ObjectNotFound, StorageError):
            raise
        except Exception as exc:  # a broken stream mid-download (connection reset, timeout)
            raise _failure(f"download of {key}", exc) from exc
        # The object's time, not the download's: a copy fetched again by a later attempt looks the same
        # to code that fingerprints its inputs by size and mtime (core's base cache).
        os.utime(dest, (info.modified, info.modified))
        return dest

    def check(self) -> None:
        """Raise StorageError unless a HEAD of the bucket answers (readiness): a missing bucket, refused
        credentials or an unreachable endpoint all fail it."""
        try:
            self.probe_client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise _failure(f"head of bucket {self.bucket}", exc) from exc
