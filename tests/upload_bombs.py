"""Hostile uploads, built on the fly. Most are small files that claim a lot of memory when read
naively (constant memory in the test process: big payloads are streamed in 1 MiB chunks).

Each was measured against the readers before they checked for it (extra RSS of one read):
``deflated_pt`` +382 MB in torch.load at 400 MB, ``pax_tar_gz`` +1 GB at 1 GB, ``zero_itemsize_npz``
+460 MB at 3e7 elements, ``many_entries_zip`` +360 MB at 1M entries.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
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
    rows = []
    for i in range(entries):
        name = f"{i:x}".encode()
        rows.append(
            struct.pack(
                "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0
            )
            + name
        )
    directory = b"".join(rows)
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
