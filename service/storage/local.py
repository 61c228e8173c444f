"""``LocalStorage``: the store as a folder (``Settings.storage_dir``; also a worker's scratch folder).

Keys are paths under the root, resolved and refused when they would leave it (``..``, symlinks). An
object is written to a hidden ``.<name>.<random>.part`` beside its final name and renamed into place
on commit, so a reader sees a whole file or none. Deleting the last object of a folder removes the
folders it leaves empty, up to the root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from service.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectWriter,
    Storage,
    StorageError,
)
from service.storage.layout import InvalidKey, check_key, folder_prefix, resolve_inside

_PART_SUFFIX = ".part"


def _is_part(name: str) -> bool:
    return name.startswith(".") and name.endswith(_PART_SUFFIX)


class _FileWriter(ObjectWriter):
    def __init__(self, store: LocalStorage, key: str, dest: Path, max_bytes: int | None) -> None:
        super().__init__(key, max_bytes)
        self._store = store
        self._dest = dest
        self._part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}{_PART_SUFFIX}")
        self._fh = None

    def _write(self, chunk: bytes) -> None:
        try:
            if self._fh is None:
                self._fh = _create(self._part)
            self._fh.write(chunk)
        except OSError as exc:
            self.abort()
            raise StorageError(f"write of {self.key} failed: {exc}") from exc

    def _commit(self) -> None:
        try:
            if self._fh is None:
                self._fh = _create(self._part)
            self._fh.close()
            os.replace(self._part, self._dest)
        except OSError as exc:
            self._abort()
            raise StorageError(f"commit of {self.key} failed: {exc}") from exc

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            if self._fh is not None:
                self._fh.close()
            self._part.unlink(missing_ok=True)
        self._store._prune(self._dest.parent)


def _create(path: Path) -> BinaryIO:
    """Open a new file for writing, creating its folders (again, if a concurrent prune removed them)."""
    for _ in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return open(path, "xb")  # noqa: SIM115 - closed by the writer
        except FileNotFoundError:  # the folder was pruned between mkdir and open
            continue
    raise StorageError(f"could not create {path.name}")


class LocalStorage(Storage):
    backend = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def check(self) -> None:
        """Cheap: the folder exists and this process may write in it (nothing is written)."""
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"folder {self.root} missing or not writable")

    def path(self, key: str) -> Path:
        """The file of ``key``; InvalidKey when the key is malformed or would leave the root."""
        path = resolve_inside(self.root, check_key(key))
        if path is None:
            raise InvalidKey(f"key leaves the store: {key[:80]!r}")
        return path

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def writer(self, key: str, *, max_bytes: int | None = None) -> ObjectWriter:
        return _FileWriter(self, key, self.path(key), max_bytes)

    def put_file(self, key: str, path: Path, *, move: bool = False) -> int:
        dest = self.path(key)
        src = Path(path)
        try:
            if src.resolve() == dest:
                return dest.stat().st_size
            if move:
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(src, dest)  # same filesystem: atomic, no copy
                    return dest.stat().st_size
                except OSError:
                    pass  # another filesystem: copy below, then drop the source
            with self.writer(key) as out, open(src, "rb") as fh:
                while block := fh.read(1 << 20):
                    out.write(block)
                size = out.commit()
            if move:
                src.unlink(missing_ok=True)
            return size
        except OSError as exc:
            raise StorageError(f"put of {key} failed: {exc}") from exc

    def open(self, key: str) -> BinaryIO:
        path = self.path(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            st = path.stat()
        except OSError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime) if path.is_file() else None

    def list(self, prefix: str) -> list[ObjectInfo]:
        folder = self.path(folder_prefix(prefix).rstrip("/"))
        out: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                if _is_part(name):
                    continue
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = path.stat()
                    out.append(ObjectInfo(self._key(path), st.st_size, st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def usage(self, prefix: str) -> int:
        """Bytes under ``prefix``; a file hard-linked from several attempt folders counts once."""
        folder = self.path(folder_prefix(prefix).rstrip("/"))
        seen: set[tuple[int, int]] = set()
        total = 0
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
        return total

    def delete(self, key: str) -> None:
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path(folder_prefix(prefix).rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(len([f for f in files if not _is_part(f)]) for _d, _s, files in os.walk(folder))
        shutil.rmtree(folder, ignore_errors=True)
        self._prune(folder.parent)
        return count

    def local_copy(self, key: str, cache_dir: Path) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and its parents while they are empty, never the root."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): stop
                return
            folder = folder.parent
