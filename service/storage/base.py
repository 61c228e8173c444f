"""The storage interface behind every upload, checkpoint, artifact and resume file.

A store maps keys (``service.storage.layout``: ``datasets/<id>/data.npz``, ``jobs/<id>/...``) to
immutable objects: an object is written whole (``writer`` streams it under a size cap and makes it
visible only on ``commit``; ``put_file`` publishes a local file), read as a stream (``open``) or as a
local file for code that needs a path (``local_copy``), listed and deleted by folder prefix. Folders
are implicit: a prefix exists while an object under it does.

Errors: ``ObjectNotFound`` (no such key), ``ObjectTooLarge`` (a write passed its cap), ``InvalidKey``
(a key that could leave the store), ``StorageError`` (the store failed or is unreachable; its text is
for the log, never for a client).
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from service.storage.layout import InvalidKey

__all__ = [
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectTooLarge",
    "ObjectWriter",
    "Storage",
    "StorageError",
]

READ_CHUNK_BYTES = 1 << 20
# What one readiness check (``Storage.check``) may take per connection attempt and per read.
CHECK_TIMEOUT_S = 2.0


class StorageError(RuntimeError):
    """The store failed or could not be reached (the message is for the log)."""


class ObjectNotFound(FileNotFoundError):
    """No object under this key."""


class ObjectTooLarge(ValueError):
    """A write passed its ``max_bytes``; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class ObjectInfo:
    """key: relative to the store's root; size: bytes; modified: unix seconds of the last write."""

    key: str
    size: int
    modified: float


class ObjectWriter(ABC):
    """One object written as a stream: ``write`` chunks, then ``commit`` (visible from then on) or
    ``abort`` (nothing kept). Leaving a ``with`` block without a commit aborts."""

    def __init__(self, key: str, max_bytes: int | None) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self.size = 0
        self.done = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; ObjectTooLarge (after aborting) once the object would pass ``max_bytes``."""
        if self.done:
            raise StorageError(f"write to {self.key} after commit or abort")
        if self.max_bytes is not None and self.size + len(chunk) > self.max_bytes:
            self.abort()
            raise ObjectTooLarge(self.max_bytes)
        self.size += len(chunk)
        self._write(chunk)

    def commit(self) -> int:
        """Make the object visible under its key (replacing any older one); returns its size."""
        if self.done:
            raise StorageError(f"commit of {self.key} after commit or abort")
        self._commit()
        self.done = True
        return self.size

    def abort(self) -> None:
        """Drop what was written; idempotent and never raises (it runs on error paths)."""
        if not self.done:
            self.done = True
            self._abort()

    @abstractmethod
    def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.abort()


class Storage(ABC):
    """A flat key -> object store; ``LocalStorage`` (a folder) and ``S3Storage`` (a bucket) implement it."""

    backend: str = ""

    @abstractmethod
    def writer(self, key: str, *, max_bytes: int | None = None) -> ObjectWriter:
        """A writer of the object ``key`` holding at most ``max_bytes`` (None: no cap)."""

    @abstractmethod
    def put_file(self, key: str, path: Path, *, move: bool = False) -> int:
        """Publish the local file ``path`` as ``key`` (``move``: the file is consumed); returns its size."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object; ObjectNotFound when there is none."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time of the object, None when there is none."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under the folder ``prefix``, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder ``prefix``; returns how many there were."""

    @abstractmethod
    def local_copy(self, key: str, cache_dir: Path) -> Path:
        """The object as a local file, for code that needs a path. A remote store downloads it into
        ``cache_dir`` (same relative key; mtime = the object's); a local one returns its own file,
        which the caller must not modify. ObjectNotFound when there is none."""

    def check(self) -> None:
        """Raise StorageError unless the store answers (readiness), within about CHECK_TIMEOUT_S."""
        return None

    def local_path(self, key: str) -> Path | None:
        """The object's own file when the store is a folder on this machine, else None."""
        return None

    def put_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> int:
        """Write ``chunks`` as one object (see ``writer``); returns its size."""
        with self.writer(key, max_bytes=max_bytes) as out:
            for chunk in chunks:
                out.write(chunk)
            return out.commit()

    def put_bytes(self, key: str, data: bytes) -> int:
        return self.put_stream(key, [data])

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def iter_chunks(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """The object in chunks of at most ``chunk_bytes``; the stream closes when the iterator ends."""
        fh = self.open(key)
        try:
            while block := fh.read(chunk_bytes):
                yield block
        finally:
            fh.close()

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def size(self, key: str) -> int | None:
        info = self.stat(key)
        return None if info is None else info.size

    def usage(self, prefix: str) -> int:
        """Bytes stored under the folder ``prefix``."""
        return sum(o.size for o in self.list(prefix))

    def copy_to(self, key: str, dest: Path) -> Path:
        """Write the object to the local file ``dest`` (through a temporary name, so ``dest`` is whole
        or absent); returns ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        try:
            with self.open(key) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, READ_CHUNK_BYTES)
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)
        return dest
