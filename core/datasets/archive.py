"""Image-folder archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, also bz2/xz tars) read safely.

Layout: ``class/xxx.png`` (sorted class folder names give evaluation labels 0..L-1 and
``class_names``) or a flat folder of images (no labels). One top-level wrapper directory around
either layout is removed (so a lone ``data/`` folder of images is a flat folder, not one class).
Images are ordered by path. Skipped without error (listed in ``notes``): files whose suffix is not
an image suffix (``README.txt``, ``labels.csv``), hidden files and folders (``.DS_Store``, macOS
``._x.png``) and anything under ``__MACOSX/``.

Safety: nothing is ever extracted to disk. A first pass reads only the member headers and refuses
the archive if any member escapes it (``..``, absolute or drive paths), is a symbolic or hard link,
a device file, a FIFO or another special file, or if member count or declared sizes exceed
``ArchiveLimits``. A second pass reads the image members one by one into memory, counting the
bytes actually read (a header that lies about its size is caught; decompressed tar streams are
capped as a whole). Each image's pixel count is checked from its header before it is decoded,
and PIL is restricted to common raster formats (no EPS/Ghostscript and the like).

Decoding: uint8; grayscale (1, L, LA, 16-bit I) stays one channel unless any image in the dataset
is colour, then every image becomes RGB; RGBA/P/CMYK and other colour modes become RGB (alpha dropped).
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
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from core.datasets.dataset import ArchiveLimits, ImageDataset
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
_PIL_FORMATS = tuple(sorted(set(IMAGE_SUFFIXES.values())))
_GRAY_MODES = ("1", "L", "LA", "La")
_ARCHIVE = "archive"
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
_LIST_SHOWN = 5


def _field(name: str) -> str:
    return f"{_ARCHIVE}:{name}"


@dataclass(frozen=True)
class _Member:
    name: str  # as stored in the archive: what errors show and what pass 2 matches
    parts: tuple[str, ...]  # normalised path components
    size: int  # declared uncompressed size


class _Reader(Protocol):
    def scan(self) -> list[_Member]: ...

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]: ...


def _safe_parts(name: str) -> tuple[str, ...]:
    """Path components of a member name; refuses names that would leave the archive's root."""
    if "\x00" in name:
        raise CoreInputError(_field(name), "member name contains a NUL byte")
    norm = name.replace("\\", "/")  # Windows tools may store backslashes: treat them as separators
    if norm.startswith("/") or _DRIVE.match(norm):
        raise CoreInputError(_field(name), "absolute member path escapes the archive")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise CoreInputError(_field(name), "member path escapes the archive ('..' component)")
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
            raise CoreInputError(_ARCHIVE, f"has more than {self.limits.max_members} members (limit)")

    def add_declared(self, name: str, size: int, *, is_image: bool) -> None:
        if size < 0:
            raise CoreInputError(_field(name), f"declares a negative size {size}")
        if is_image and size > self.limits.max_member_bytes:
            raise CoreInputError(
                _field(name),
                f"declares {size} bytes uncompressed, more than the limit {self.limits.max_member_bytes}",
            )
        self.declared += size
        if self.declared > self.limits.max_total_bytes:
            raise CoreInputError(
                _ARCHIVE,
                f"members declare more than {self.limits.max_total_bytes} bytes uncompressed in total "
                "(limit)",
            )

    def add_read(self, name: str, data: bytes, declared: int) -> None:
        if len(data) > self.limits.max_member_bytes:
            raise CoreInputError(
                _field(name), f"holds more than {self.limits.max_member_bytes} bytes uncompressed (limit)"
            )
        if len(data) != declared:
            raise CoreInputError(
                _field(name),
                f"header declares {declared} bytes but the member holds {len(data)}; corrupt archive",
            )
        self.read += len(data)
        if self.read > self.limits.max_total_bytes:
            raise CoreInputError(
                _ARCHIVE, f"more than {self.limits.max_total_bytes} bytes uncompressed (limit)"
            )


def _is_image(parts: tuple[str, ...]) -> bool:
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
            self.path, max_members=self.totals.limits.max_members, field=_ARCHIVE, what="valid zip archive"
        )
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise CoreInputError(_ARCHIVE, f"not a valid zip archive: {err}") from None

    def scan(self) -> list[_Member]:
        with self._open() as zf:
            infos = zf.infolist()
        members: list[_Member] = []
        for info in infos:
            self.totals.add_member()
            name = info.filename
            parts = _safe_parts(name)
            # Unix mode bits live in the high 16 bits of external_attr (zero when not recorded).
            ftype = stat.S_IFMT(info.external_attr >> 16)
            if ftype == stat.S_IFLNK:
                raise CoreInputError(_field(name), "is a symbolic link; links are refused")
            if ftype in (stat.S_IFCHR, stat.S_IFBLK):
                raise CoreInputError(_field(name), "is a device file; refused")
            if ftype in (stat.S_IFIFO, stat.S_IFSOCK):
                raise CoreInputError(_field(name), "is a FIFO or socket; refused")
            if info.is_dir() or ftype == stat.S_IFDIR or not parts:
                continue
            if info.flag_bits & 0x1:
                raise CoreInputError(_field(name), "is encrypted")
            if name in self._infos:
                raise CoreInputError(_field(name), "appears twice in the archive")
            self.totals.add_declared(name, info.file_size, is_image=_is_image(parts))
            self._infos[name] = info
            members.append(_Member(name, parts, info.file_size))
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
                    raise CoreInputError(_field(name), f"corrupt member: {err}") from None
                self.totals.add_read(name, data, info.file_size)
                yield name, data


class _CappedTarInfo(tarfile.TarInfo):
    """Refuses an extended header (pax, GNU long name) larger than ``MAX_TAR_HEADER_BYTES`` before
    tarfile reads its body into memory."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise CoreInputError(
                _ARCHIVE,
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
            raise CoreInputError(_ARCHIVE, f"decompresses to more than {self.budget} bytes (limit)")
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
                    _ARCHIVE, f"not a valid tar archive (corrupt or truncated?): {err}"
                ) from None

    def scan(self) -> list[_Member]:
        members: list[_Member] = []
        for _, m in self._iterate():
            self.totals.add_member()
            name = m.name
            parts = _safe_parts(name)
            if m.issym() or m.islnk():
                kind = "symbolic" if m.issym() else "hard"
                raise CoreInputError(_field(name), f"is a {kind} link (to {m.linkname!r}); links are refused")
            if m.ischr() or m.isblk():
                raise CoreInputError(_field(name), "is a device file; refused")
            if m.isfifo():
                raise CoreInputError(_field(name), "is a FIFO; refused")
            if m.isdir() or not parts:
                continue
            if m.issparse():
                raise CoreInputError(_field(name), "is a sparse file; refused")
            if not m.isreg():
                raise CoreInputError(_field(name), f"has unsupported member type {m.type!r}; refused")
            if name in self._sizes:
                raise CoreInputError(_field(name), "appears twice in the archive")
            self.totals.add_declared(name, m.size, is_image=_is_image(parts))
            self._sizes[name] = m.size
            members.append(_Member(name, parts, m.size))
        return members

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        limit = self.totals.limits.max_member_bytes
        for tf, m in self._iterate():
            if m.name not in wanted or not m.isreg():
                continue
            f = tf.extractfile(m)
            if f is None:
                raise CoreInputError(_field(m.name), "cannot be read")
            try:
                data = f.read(limit + 1)
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
                raise CoreInputError(_field(m.name), f"corrupt member (truncated archive?): {err}") from None
            self.totals.add_read(m.name, data, self._sizes[m.name])
            yield m.name, data


def _layout(images: list[_Member]) -> tuple[list[tuple[str, ...]], bool]:
    """Relative paths after removing one wrapper folder, and whether class folders give labels."""
    paths = [m.parts for m in images]
    if len({len(p) for p in paths}) == 1 and len(paths[0]) >= 2 and len({p[0] for p in paths}) == 1:
        paths = [p[1:] for p in paths]  # a single top-level folder wraps everything
    depths = {len(p) for p in paths}
    if depths == {1}:
        return paths, False
    if depths == {2}:
        return paths, True
    by_depth = {len(p): m.name for p, m in zip(paths, images, strict=True)}
    examples = " and ".join(repr(by_depth[d]) for d in sorted(by_depth)[:2])
    raise CoreInputError(
        _ARCHIVE,
        "unsupported layout: images must all be 'class/image' or all at the top level (optionally "
        f"inside one wrapper folder); found {examples}",
    )


def _to_array(img: Image.Image) -> tuple[np.ndarray, bool]:
    """(H, W) uint8 for grayscale or (H, W, 3) uint8 for colour, and whether it is colour."""
    mode = img.mode
    if mode in _GRAY_MODES:
        return np.asarray(img.convert("L"), dtype=np.uint8), False
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grayscale (PNG/TIFF): rescale 0..65535 to 0..255 instead of clipping.
        wide = np.asarray(img).astype(np.float64)
        return np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), False
    if mode == "F":
        raise ValueError("32-bit float images (mode F) are not supported")
    return np.asarray(img.convert("RGB"), dtype=np.uint8), True


def _decode(name: str, data: bytes, limits: ArchiveLimits) -> tuple[np.ndarray, bool]:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies below; PIL's global warning is noise.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
                w, h = img.size
                if w * h > limits.max_image_pixels:
                    raise CoreInputError(
                        _field(name),
                        f"image is {w}x{h} = {w * h} pixels, more than the limit {limits.max_image_pixels} "
                        "(decompression bomb?)",
                    )
                if w == 0 or h == 0:
                    raise CoreInputError(_field(name), f"image has zero size {w}x{h}")
                img.load()
                return _to_array(img)
    except CoreInputError:
        raise
    except Image.DecompressionBombError as err:
        raise CoreInputError(
            _field(name), f"image has too many pixels (decompression bomb?): {err}"
        ) from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad input; all mean "unreadable"
        raise CoreInputError(_field(name), f"unreadable image: {type(err).__name__}: {err}") from None


def _reader_for(path: Path, limits: ArchiveLimits, kind: ArchiveKind | None) -> _Reader:
    if kind is None:
        with path.open("rb") as f:
            kind = "zip" if f.read(2) == b"PK" else "tar"
    return _ZipReader(path, limits) if kind == "zip" else _TarReader(path, limits)


def _shown(names: list[str]) -> str:
    more = len(names) - _LIST_SHOWN
    return ", ".join(names[:_LIST_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def load_archive(
    path: Path, *, limits: ArchiveLimits = ArchiveLimits(), kind: ArchiveKind | None = None
) -> ImageDataset:
    """Load an image-folder archive into an ImageDataset.

    kind: "zip" or "tar" (any compression, detected from the content); None sniffs the file.
    """
    reader = _reader_for(path, limits, kind)
    members = reader.scan()
    images = [m for m in members if _is_image(m.parts)]
    skipped = [m.name for m in members if not _is_image(m.parts)]
    if not images:
        raise CoreInputError(
            _ARCHIVE,
            f"contains no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"{len(skipped)} other file(s) skipped",
        )
    rel, labelled = _layout(images)
    order = sorted(range(len(images)), key=lambda i: rel[i])
    images = [images[i] for i in order]
    rel = [rel[i] for i in order]
    index = {m.name: i for i, m in enumerate(images)}
    n = len(images)

    class_names: list[str] | None = None
    labels: torch.Tensor | None = None
    if labelled:
        class_names = sorted({p[0] for p in rel})
        class_of = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([class_of[p[0]] for p in rel], dtype=torch.int64)

    buf: np.ndarray | None = None
    first = ""
    seen = 0
    gray = 0
    for name, data in reader.read(set(index)):
        arr, colour = _decode(name, data, limits)
        h, w = arr.shape[:2]
        if buf is None:
            first = name
            buf = np.zeros((n, h, w, 3 if colour else 1), dtype=np.uint8)
        elif (h, w) != buf.shape[1:3]:
            raise CoreInputError(
                _field(name),
                f"image is {w}x{h} (WxH) but {first} is {buf.shape[2]}x{buf.shape[1]}; "
                "all images must have one size",
            )
        if buf.nbytes > limits.max_dataset_bytes or (colour and buf.nbytes * 3 > limits.max_dataset_bytes):
            raise CoreInputError(
                _ARCHIVE, f"decoded images would take more than {limits.max_dataset_bytes} bytes (limit)"
            )
        if colour and buf.shape[3] == 1:
            # First colour image: every image (earlier gray ones included) becomes RGB.
            rgb = np.empty((n, h, w, 3), dtype=np.uint8)
            rgb[:] = buf
            buf = rgb
        gray += not colour
        buf[index[name]] = arr.reshape(h, w, -1)
        seen += 1
    if buf is None or seen != n:
        raise CoreInputError(_ARCHIVE, f"read {seen} of {n} images; the archive changed or is corrupt")

    notes: list[str] = []
    if skipped:
        notes.append(f"skipped {len(skipped)} non-image file(s): {_shown(sorted(skipped))}")
    if gray and buf.shape[3] == 3:
        notes.append(f"{gray} grayscale image(s) converted to RGB because the others are colour")
    return ImageDataset(images=torch.from_numpy(buf), labels=labels, class_names=class_names, notes=notes)
