"""Reading archive members safely: member headers first (names, types, declared sizes), then the
bytes of chosen members, with every limit of ``ArchiveLimits`` counted as they are read.

Nothing is ever extracted to disk. ``scan`` refuses a member that escapes the archive (``..``, absolute
or drive paths), is a link, a device, a FIFO or another special file, appears twice, or exceeds a
declared-size limit; ``read`` counts the bytes actually read (a header that lies about its size is
caught; decompressed tar streams are capped as a whole, tar extended headers are capped before
tarfile reads them, and a zip's entry count is checked before zipfile lists them).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from core.datasets.limits import ArchiveLimits
from core.datasets.zip_guard import check_zip_directory
from core.errors import CoreInputError

IMAGE_SUFFIXES: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".pbm": "PPM",
    ".pnm": "PPM",
}
ARCHIVE_FIELD = "archive"
ArchiveKind = Literal["zip", "tar"]
# Per-member bytes a tar stream spends outside file data (512-byte header, padding to 512, a pax or
# GNU long-name record): the decompressed-stream cap allows this on top of max_total_bytes.
_TAR_MEMBER_OVERHEAD = 4096
_TAR_FIXED_OVERHEAD = 1024 * 1024
# A pax header or GNU long name/link record is read whole into memory by tarfile before the member it
# describes; real ones hold a path and a few attributes.
MAX_TAR_HEADER_BYTES = 1024 * 1024
_EXTENDED_HEADER_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_DRIVE = re.compile(r"^[A-Za-z]:")


def member_field(name: str) -> str:
    return f"{ARCHIVE_FIELD}:{name}"


@dataclass(frozen=True)
class Member:
    name: str  # as stored in the archive: what errors show and what pass 2 matches
    parts: tuple[str, ...]  # normalised path components
    size: int  # declared uncompressed size


class _Reader(Protocol):
    def scan(self) -> list[Member]: ...

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]: ...


def _safe_parts(name: str) -> tuple[str, ...]:
    """Path components of a member name; refuses names that would leave the archive's root."""
    if "\x00" in name:
        raise CoreInputError(member_field(name), "member name contains a NUL byte")
    norm = name.replace("\\", "/")  # Windows tools may store backslashes: treat them as separators
    if norm.startswith("/") or _DRIVE.match(norm):
        raise CoreInputError(member_field(name), "absolute member path escapes the archive")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise CoreInputError(member_field(name), "member path escapes the archive ('..' component)")
    return parts


class _Totals:
    """Running limits shared by both passes."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.count = 0
        self.declared = 0
        self.read = 0

    def add_member(self) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise CoreInputError(ARCHIVE_FIELD, f"has more than {self.limits.max_members} members (limit)")

    def add_declared(self, name: str, size: int, *, is_image: bool) -> None:
        if size < 0:
            raise CoreInputError(member_field(name), f"declares a negative size {size}")
        if is_image and size > self.limits.max_member_bytes:
            raise CoreInputError(
                member_field(name),
                f"declares {size} bytes uncompressed, more than the limit {self.limits.max_member_bytes}",
            )
        self.declared += size
        if self.declared > self.limits.max_total_bytes:
            raise CoreInputError(
                ARCHIVE_FIELD,
                f"members declare more than {self.limits.max_total_bytes} bytes uncompressed in total "
                "(limit)",
            )

    def add_read(self, name: str, data: bytes, declared: int) -> None:
        if len(data) > self.limits.max_member_bytes:
            raise CoreInputError(
                member_field(name),
                f"holds more than {self.limits.max_member_bytes} bytes uncompressed (limit)",
            )
        if len(data) != declared:
            raise CoreInputError(
                member_field(name),
                f"header declares {declared} bytes but the member holds {len(data)}; corrupt archive",
            )
        self.read += len(data)
        if self.read > self.limits.max_total_bytes:
            raise CoreInputError(
                ARCHIVE_FIELD, f"more than {self.limits.max_total_bytes} bytes uncompressed (limit)"
            )


def is_image(parts: tuple[str, ...]) -> bool:
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES


class _ZipReader:
    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.path = path
        self.totals = _Totals(limits)
        self._infos: dict[str, zipfile.ZipInfo] = {}

    def _open(self) -> zipfile.ZipFile:
        check_zip_directory(
            self.path,
            max_members=self.totals.limits.max_members,
            field=ARCHIVE_FIELD,
            what="valid zip archive",
        )
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise CoreInputError(ARCHIVE_FIELD, f"not a valid zip archive: {err}") from None

    def scan(self) -> list[Member]:
        with self._open() as zf:
            infos = zf.infolist()
        members: list[Member] = []
        for info in infos:
            self.totals.add_member()
            name = info.filename
            parts = _safe_parts(name)
            # Unix mode bits live in the high 16 bits of external_attr (zero when not recorded).
            ftype = stat.S_IFMT(info.external_attr >> 16)
            if ftype == stat.S_IFLNK:
                raise CoreInputError(member_field(name), "is a symbolic link; links are refused")
            if ftype in (stat.S_IFCHR, stat.S_IFBLK):
                raise CoreInputError(member_field(name), "is a device file; refused")
            if ftype in (stat.S_IFIFO, stat.S_IFSOCK):
                raise CoreInputError(member_field(name), "is a FIFO or socket; refused")
            if info.is_dir() or ftype == stat.S_IFDIR or not parts:
                continue
            if info.flag_bits & 0x1:
                raise CoreInputError(member_field(name), "is encrypted")
            if name in self._infos:
                raise CoreInputError(member_field(name), "appears twice in the archive")
            self.totals.add_declared(name, info.file_size, is_image=is_image(parts))
            self._infos[name] = info
            members.append(Member(name, parts, info.file_size))
        return members

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        limit = self.totals.limits.max_member_bytes
        with self._open() as zf:
            for name in sorted(wanted):
                info = self._infos[name]
                try:
                    with zf.open(info) as f:
                        data = f.read(limit + 1)
                except (
                    zipfile.BadZipFile,
                    zlib.error,
                    EOFError,
                    OSError,
                    NotImplementedError,
                    RuntimeError,
                ) as err:
                    raise CoreInputError(member_field(name), f"corrupt member: {err}") from None
                self.totals.add_read(name, data, info.file_size)
                yield name, data


class _CappedTarInfo(tarfile.TarInfo):
    """Refuses an extended header (pax, GNU long name) larger than ``MAX_TAR_HEADER_BYTES`` before
    tarfile reads its body into memory."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise CoreInputError(
                ARCHIVE_FIELD,
                f"has an extended (pax or long-name) header of {self.size} bytes, more than the limit "
                f"{MAX_TAR_HEADER_BYTES}",
            )
        return super()._proc_member(tarfile)  # type: ignore[misc]


class _BudgetReader(io.RawIOBase):
    """Counts bytes pulled from a (decompressing) stream and stops at a cap (tar/gzip bombs)."""

    def __init__(self, inner: BinaryIO, budget: int) -> None:
        super().__init__()
        self.inner = inner
        self.budget = budget
        self.used = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.budget - self.used + 1
        data = self.inner.read(size)
        self.used += len(data)
        if self.used > self.budget:
            raise CoreInputError(ARCHIVE_FIELD, f"decompresses to more than {self.budget} bytes (limit)")
        return data


class _TarReader:
    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.path = path
        self.totals = _Totals(limits)
        self._sizes: dict[str, int] = {}
        self.budget = limits.max_total_bytes + limits.max_members * _TAR_MEMBER_OVERHEAD + _TAR_FIXED_OVERHEAD

    def _iterate(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        with contextlib.ExitStack() as stack:
            raw: BinaryIO = stack.enter_context(self.path.open("rb"))
            magic = raw.read(6)
            raw.seek(0)
            inner: BinaryIO = raw
            if magic[:2] == b"\x1f\x8b":
                inner = stack.enter_context(gzip.GzipFile(fileobj=raw))  # type: ignore[arg-type]
            elif magic[:3] == b"BZh":
                inner = stack.enter_context(bz2.BZ2File(raw))  # type: ignore[arg-type]
            elif magic == b"\xfd7zXZ\x00":
                inner = stack.enter_context(lzma.LZMAFile(raw))  # type: ignore[arg-type]
            try:
                # Stream mode ('r|'): strictly sequential reads, so the byte budget covers everything
                # the decompressor produces, headers and skipped members included.
                tf = stack.enter_context(
                    tarfile.open(fileobj=_BudgetReader(inner, self.budget), mode="r|", tarinfo=_CappedTarInfo)
                )
                for member in tf:
                    yield tf, member
            except CoreInputError:
                raise
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as err:
                raise CoreInputError(
                    ARCHIVE_FIELD, f"not a valid tar archive (corrupt or truncated?): {err}"
                ) from None

    def scan(self) -> list[Member]:
        members: list[Member] = []
        for _, m in self._iterate():
            self.totals.add_member()
            name = m.name
            parts = _safe_parts(name)
            if m.issym() or m.islnk():
                kind = "symbolic" if m.issym() else "hard"
                raise CoreInputError(
                    member_field(name), f"is a {kind} link (to {m.linkname!r}); links are refused"
                )
            if m.ischr() or m.isblk():
                raise CoreInputError(member_field(name), "is a device file; refused")
            if m.isfifo():
                raise CoreInputError(member_field(name), "is a FIFO; refused")
            if m.isdir() or not parts:
                continue
            if m.issparse():
                raise CoreInputError(member_field(name), "is a sparse file; refused")
            if not m.isreg():
                raise CoreInputError(member_field(name), f"has unsupported member type {m.type!r}; refused")
            if name in self._sizes:
                raise CoreInputError(member_field(name), "appears twice in the archive")
            self.totals.add_declared(name, m.size, is_image=is_image(parts))
            self._sizes[name] = m.size
            members.append(Member(name, parts, m.size))
        return members

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        limit = self.totals.limits.max_member_bytes
        for tf, m in self._iterate():
            if m.name not in wanted or not m.isreg():
                continue
            f = tf.extractfile(m)
            if f is None:
                raise CoreInputError(member_field(m.name), "cannot be read")
            try:
                data = f.read(limit + 1)
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
                raise CoreInputError(
                    member_field(m.name), f"corrupt member (truncated archive?): {err}"
                ) from None
            self.totals.add_read(m.name, data, self._sizes[m.name])
            yield m.name, data


def open_reader(path: Path, limits: ArchiveLimits, kind: ArchiveKind | None) -> _Reader:
    if kind is None:
        with path.open("rb") as f:
            kind = "zip" if f.read(2) == b"PK" else "tar"
    return _ZipReader(path, limits) if kind == "zip" else _TarReader(path, limits)
