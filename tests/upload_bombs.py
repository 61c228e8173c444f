"""Hostile uploads, built on the fly. Most are small files that claim a lot of memory when read
naively (constant memory in the test process: big payloads are streamed in 1 MiB chunks); the rest
escape the archive (links, ``..``), nest, or carry pickles that run code when loaded unsafely.

Each was measured against the readers before they checked for it (extra RSS of one read):
``deflated_pt`` +382 MB in torch.load at 400 MB, ``pax_tar_gz`` +1 GB at 1 GB, ``zero_itemsize_npz``
+460 MB at 3e7 elements, ``many_entries_zip`` +360 MB at 1M entries.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

MiB = 1024**2
_ZEROS = bytes(MiB)


def deflated_pt(path: Path, *, inflated_bytes: int) -> Path:
    """A torch zip checkpoint whose ``data.pkl`` record is deflated and padded with zeros after the
    pickle's STOP (the unpickler ignores them; torch's reader inflates the whole record first)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if not info.filename.endswith("data.pkl"):
                dst.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)
                continue
            target = zipfile.ZipInfo(info.filename)
            target.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(target, "w", force_zip64=True) as out:
                out.write(data)
                for _ in range(inflated_bytes // MiB):
                    out.write(_ZEROS)
    return path


def pax_tar_gz(path: Path, *, header_bytes: int) -> Path:
    """A .tar.gz whose first member is a pax extended header of ``header_bytes`` (zeros)."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = header_bytes
    block = info.tobuf(format=tarfile.USTAR_FORMAT)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(block)
        for _ in range(header_bytes // MiB):
            f.write(_ZEROS)
        f.write(bytes(1024))  # end-of-archive blocks
    return path


def zero_itemsize_npz(path: Path, *, count: int) -> Path:
    """A valid images/labels npz plus ``class_names`` of dtype ``|S0`` and ``count`` elements (no data)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|S0", "fortran_order": False, "shape": (count,)})
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in (("images", np.zeros((3, 4, 4, 1), np.uint8)), ("labels", np.arange(3))):
            out = io.BytesIO()
            np.lib.format.write_array(out, arr)
            zf.writestr(f"{name}.npy", out.getvalue())
        zf.writestr("class_names.npy", header.getvalue())  # the header writer adds the magic
    return path


def many_entries_zip(path: Path, *, entries: int, claimed: int | None = None) -> Path:
    """A zip whose central directory lists ``entries`` empty members (no local data); the end record
    says ``claimed`` entries (default: the truth; a lie hides them from a count-only check)."""
    width = len(f"{max(entries - 1, 0):x}")  # names 0, 1, ... in hex, zero-padded to one width
    head = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, width, 0, 0, 0, 0, 0, 0)
    rows = np.empty((entries, len(head) + width), np.uint8)  # built as one array: 1M rows in ~0.1 s
    rows[:, : len(head)] = np.frombuffer(head, np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    for place in range(width):
        rows[:, len(head) + width - 1 - place] = digits[(np.arange(entries) >> (4 * place)) & 15]
    directory = rows.tobytes()
    zip64 = claimed is None and entries >= 0xFFFF
    shown = 0xFFFF if zip64 else (entries if claimed is None else claimed)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, shown, shown, len(directory), 0, 0)
    if zip64:  # the zip64 end record and its locator carry the real count
        z64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory), 0)
        loc = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(directory), 1)
        eocd = z64 + loc + eocd
    path.write_bytes(directory + eocd)
    return path


def undecodable_tar(path: Path) -> Path:
    """A tar whose one member's name holds raw bytes that are not UTF-8 (0xff) and a control byte."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("cat/\xff\x07img.png")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"junk"))
    return path


# What a reader says about it, as stored: the bytes escaped, the text valid UTF-8.
UNDECODABLE_REASON = r"archive:cat/\xff\x07img.png: unreadable image: UnidentifiedImageError"


class _Run:
    """Unpickling this runs ``code``: what a malicious checkpoint carries."""

    def __init__(self, code: str, via_system: bool = False) -> None:
        self.code, self.via_system = code, via_system

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.code,)) if self.via_system else (exec, (self.code,))


def pickle_pt(path: Path, marker: Path, *, legacy: bool) -> Path:
    """A torch checkpoint whose pickle writes ``marker`` when loaded without weights_only."""
    payload = _Run(f"touch {marker}", via_system=True) if legacy else _Run(f"open({str(marker)!r}, 'w')")
    torch.save({"w": torch.zeros(2), "x": payload}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiny_png() -> bytes:
    """A valid 4x4 grey PNG."""
    return _png(4, 4, zlib.compress(bytes(5) * 4))


def png_bomb_zip(path: Path, *, side: int) -> Path:
    """A zip of a good image and a real side x side zero PNG (side**2 bytes from ~side**2/1000)."""
    comp = zlib.compressobj(1)
    row = bytes(side + 1)  # filter byte + pixels
    per = max(1, MiB // len(row))
    idat = b"".join(comp.compress(row * min(per, side - done)) for done in range(0, side, per))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cls/ok.png", tiny_png())
        zf.writestr("cls/bomb.png", _png(side, side, idat + comp.flush()))
    return path


def tar_with(path: Path, name: str, *, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Path:
    """A tar of one good image ``a/ok.png`` and one member ``name`` of type ``kind``."""
    png = tiny_png()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for member_name, member_kind in (("a/ok.png", tarfile.REGTYPE), (name, kind)):
            info = tarfile.TarInfo(member_name)
            info.type, info.linkname = member_kind, linkname if member_kind != tarfile.REGTYPE else ""
            info.size = len(png) if member_kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(png) if member_kind == tarfile.REGTYPE else None)
    return path


def zip_with(path: Path, name: str) -> Path:
    """A zip of one member called ``name`` (what a reader must refuse rather than resolve)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"x")
    return path


def safetensors_with(path: Path, **metadata: str) -> Path:
    """A valid 1-channel small_cnn clustering checkpoint, ``metadata`` (say, NaN stats) in its header."""
    from safetensors.torch import save_file

    from core.models import ClusteringModel, build_backbone

    torch.manual_seed(0)
    backbone, dim = build_backbone("small_cnn", in_channels=1)
    state = {k: v.contiguous() for k, v in ClusteringModel(backbone, dim, 2).state_dict().items()}
    save_file(state, str(path), metadata=metadata or None)
    return path
