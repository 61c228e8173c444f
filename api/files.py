"""Files through the store: artifact downloads and the removal of a deleted row's files.

A download from a local store is a ``FileResponse`` (sendfile, ranges); from a remote store the API
streams the object to the client in ``READ_CHUNK_BYTES`` reads, so the store needs to be reachable
only from the API and the workers and no object URL (presigned or not) ever leaves the service: every
download passes the API key check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import Response

from service.storage import InvalidKey, ObjectNotFound, Storage, StorageError, check_key

log = logging.getLogger("api.files")


def download_response(storage: Storage, key: str, *, media_type: str, filename: str) -> Response | None:
    """The object as a response, or None when it is missing (the caller answers 404)."""
    try:
        path = storage.local_path(check_key(key))
    except InvalidKey:  # a row naming a path outside the store (``..``, a symlink out)
        return None
    if path is not None:
        return FileResponse(path, media_type=media_type, filename=filename) if path.is_file() else None
    info = storage.stat(key)
    if info is None:
        return None
    try:
        chunks = storage.iter_chunks(key)
        first = next(chunks, b"")  # opens the object now: a 404 or an outage answers before any byte
    except ObjectNotFound:
        return None

    def body() -> Iterator[bytes]:
        yield first
        yield from chunks

    # Artifact names are plain ASCII (ARTIFACT_NAME), so the quoted form needs no escaping.
    headers = {"Content-Length": str(info.size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(body(), media_type=media_type, headers=headers)


def remove_after_commit(storage: Storage, prefix: str) -> None:
    """Delete the objects of a row that is gone (deleted, or never committed); a failing store leaves
    them to the retention sweep's orphan pass, and the request's own answer stands."""
    try:
        storage.delete_prefix(prefix)
    except StorageError as exc:
        log.warning("objects under %s left for the retention sweep: %s", prefix, exc)
