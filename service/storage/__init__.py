"""Where uploads, checkpoints, artifacts and resume files live: a local folder or an S3 bucket.

``get_storage(settings)`` is the store of ``Settings.storage_backend`` (``local``: ``LocalStorage`` over
``Settings.storage_dir``; ``s3``: ``S3Storage`` over ``s3_bucket``/``s3_prefix``), one per process and
configuration. The interface is ``service.storage.base``; keys and safe names are
``service.storage.layout`` (re-exported here, as before the package existed).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from service.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    ObjectWriter,
    Storage,
    StorageError,
)
from service.storage.layout import (
    ARTIFACT_NAME,
    CHECKPOINT_SUFFIXES,
    DATASET_SUFFIXES,
    InvalidKey,
    check_key,
    folder_prefix,
    job_dir,
    matched_suffix,
    remove_dir,
    resolve_inside,
    sanitize_filename,
    upload_dir,
)
from service.storage.local import LocalStorage

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = [
    "ARTIFACT_NAME",
    "CHECKPOINT_SUFFIXES",
    "DATASET_SUFFIXES",
    "InvalidKey",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectTooLarge",
    "ObjectWriter",
    "Storage",
    "StorageError",
    "check_key",
    "folder_prefix",
    "get_storage",
    "job_dir",
    "matched_suffix",
    "remove_dir",
    "resolve_inside",
    "sanitize_filename",
    "upload_dir",
]

_stores: dict[tuple[object, ...], Storage] = {}
_lock = threading.Lock()


def _config(settings: Settings) -> tuple[object, ...]:
    # The pid too: a boto3 client's connection pool must not be shared across a fork (Celery's pool).
    if settings.storage_backend == "local":
        return ("local", str(settings.storage_dir), os.getpid())
    return (
        "s3",
        settings.s3_bucket,
        settings.s3_prefix,
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_access_key_id,
        settings.s3_secret_access_key.get_secret_value(),
        settings.s3_part_bytes,
        os.getpid(),
    )


def get_storage(settings: Settings) -> Storage:
    """The store the settings describe; built once per process and configuration."""
    key = _config(settings)
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = _build(settings)
        return store


def _build(settings: Settings) -> Storage:
    if settings.storage_backend == "local":
        return LocalStorage(settings.storage_dir)
    from service.storage.s3 import S3Storage, s3_client

    return S3Storage(
        s3_client(settings),
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        part_bytes=settings.s3_part_bytes,
        probe_client=s3_client(settings, probe=True),
    )
