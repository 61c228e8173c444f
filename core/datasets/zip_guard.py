"""Zip checks that run before ``zipfile.ZipFile`` builds its member list.

``zipfile`` turns every central-directory entry into a ``ZipInfo`` (a few hundred bytes each) before a
caller can count them, so a small file holding a million 46-byte entries costs hundreds of MB. Here
the end-of-central-directory record (and its zip64 form) is read first, and the directory is then
walked entry by entry, header fields only, stopping past ``max_members``. ``zipfile`` walks the
directory by its byte size, not by the record's count, so both are checked.
"""

from __future__ import annotations

import struct
from pathlib import Path

from core.errors import CoreInputError

_EOCD_SIG = b"PK\x05\x06"
_EOCD_SIZE = 22
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_CENTRAL_SIG = b"PK\x01\x02"
_CENTRAL_SIZE = 46
_MAX_COMMENT = 0xFFFF


def _eocd(path: Path, field: str, what: str) -> tuple[int, int, int]:
    """(entry count, central directory size, its offset) from the end records."""
    size = path.stat().st_size
    with path.open("rb") as f:
        tail_len = min(size, _EOCD_SIZE + _MAX_COMMENT)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(_EOCD_SIG)
        if at < 0 or len(tail) - at < _EOCD_SIZE:
            raise CoreInputError(field, f"not a {what}: no end-of-central-directory record")
        _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[at : at + _EOCD_SIZE])
        if count != 0xFFFF and cd_size != 0xFFFFFFFF and cd_offset != 0xFFFFFFFF:
            return count, cd_size, cd_offset
        eocd_pos = size - tail_len + at
        if eocd_pos < _ZIP64_LOCATOR_SIZE:
            raise CoreInputError(field, f"not a {what}: zip64 locator missing")
        f.seek(eocd_pos - _ZIP64_LOCATOR_SIZE)
        sig, _, rec_offset, _ = struct.unpack("<4sLQL", f.read(_ZIP64_LOCATOR_SIZE))
        if sig != _ZIP64_LOCATOR_SIG or rec_offset > size - 56:
            raise CoreInputError(field, f"not a {what}: zip64 locator missing")
        f.seek(rec_offset)
        rec = f.read(56)
        if rec[:4] != _ZIP64_EOCD_SIG:
            raise CoreInputError(field, f"not a {what}: bad zip64 end record")
        _, count64, cd_size64, cd_offset64 = struct.unpack("<32sQQQ", rec[:56])
        return count64, cd_size64, cd_offset64


def check_zip_directory(path: Path, *, max_members: int, field: str, what: str = "valid zip file") -> int:
    """Refuse a zip whose central directory holds more than ``max_members`` entries; returns the count.

    ``what`` names the file in the error of a file that is no zip at all. Reads at most the end
    records and ``max_members + 1`` fixed 46-byte entry headers; memory stays constant whatever the
    directory holds.
    """
    count, cd_size, cd_offset = _eocd(path, field, what)
    if count > max_members:
        raise CoreInputError(field, f"has more than {max_members} members (limit)")
    size = path.stat().st_size
    end = min(size, cd_offset + cd_size)
    walked = 0
    with path.open("rb") as f:
        f.seek(min(cd_offset, size))
        while f.tell() + _CENTRAL_SIZE <= end:
            head = f.read(_CENTRAL_SIZE)
            if head[:4] != _CENTRAL_SIG:
                break  # zipfile reports a corrupt directory itself
            walked += 1
            if walked > max_members:
                raise CoreInputError(field, f"has more than {max_members} members (limit)")
            name_len, extra_len, comment_len = struct.unpack("<3H", head[28:34])
            f.seek(name_len + extra_len + comment_len, 1)
    return max(count, walked)
