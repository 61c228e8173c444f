"""Bad zip/tar archives (traversal, special members, bombs, corrupt data, wrong sizes) are refused
with a CoreInputError naming the member."""

from __future__ import annotations

import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import image_array, png_bytes, tar_file, tar_with_special, zip_file

import core.datasets.archive as archive_mod
import core.datasets.archive_readers as readers_mod
from core.datasets import ArchiveLimits, ImageDataset, load_dataset
from core.errors import CoreInputError

# ----------------------------------------------------------------------------------- bad archives


def test_mixed_image_sizes_name_both_members(tmp_path: Path) -> None:
    path = zip_file(
        tmp_path / "d.zip", {"a.png": png_bytes(image_array(4, 4)), "b.png": png_bytes(image_array(5, 4))}
    )
    with pytest.raises(CoreInputError, match=r"archive:b\.png: image is 4x5 \(WxH\) but a\.png is 4x4"):
        load_dataset(path)


def test_unreadable_image_names_the_member(tmp_path: Path) -> None:
    path = tar_file(
        tmp_path / "d.tar", {"cat/ok.png": png_bytes(image_array()), "cat/broken.png": b"\x89PNG not really"}
    )
    with pytest.raises(CoreInputError, match=r"archive:cat/broken\.png: unreadable image"):
        load_dataset(path)


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    data = png_bytes(image_array(16, 16, 3))
    path = zip_file(tmp_path / "d.zip", {"a.png": data[: len(data) // 2]})
    with pytest.raises(CoreInputError, match=r"archive:a\.png: unreadable image"):
        load_dataset(path)


def test_eps_disguised_as_png_is_not_decoded(tmp_path: Path) -> None:
    """PIL would hand EPS to Ghostscript; only common raster formats are allowed."""
    path = zip_file(tmp_path / "d.zip", {"a.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"})
    with pytest.raises(CoreInputError, match=r"archive:a\.png: unreadable image"):
        load_dataset(path)


def test_no_images(tmp_path: Path) -> None:
    path = zip_file(tmp_path / "d.zip", {"README.txt": b"hi", "data.csv": b"1,2"})
    with pytest.raises(CoreInputError, match=r"archive: contains no image files .*2 other file\(s\) skipped"):
        load_dataset(path)


def test_mixed_depth_layout(tmp_path: Path) -> None:
    path = zip_file(
        tmp_path / "d.zip", {"a.png": png_bytes(image_array()), "cat/b.png": png_bytes(image_array())}
    )
    with pytest.raises(CoreInputError, match=r"archive: unsupported layout.*'a\.png' and 'cat/b\.png'"):
        load_dataset(path)


@pytest.mark.parametrize("name", ["../evil.png", "cat/../../evil.png", "..\\evil.png"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_path_traversal_is_refused(tmp_path: Path, name: str, kind: str) -> None:
    members = {"cat/ok.png": png_bytes(image_array()), name: png_bytes(image_array())}
    path = zip_file(tmp_path / "d.zip", members) if kind == "zip" else tar_file(tmp_path / "d.tar", members)
    with pytest.raises(CoreInputError, match=r"escapes the archive \('\.\.' component\)"):
        load_dataset(path)


@pytest.mark.parametrize("name", ["/etc/x.png", "C:/x.png"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_absolute_paths_are_refused(tmp_path: Path, name: str, kind: str) -> None:
    members = {"ok.png": png_bytes(image_array()), name: png_bytes(image_array())}
    if kind == "zip":
        path = tmp_path / "d.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in members.items():
                zf.writestr(zipfile.ZipInfo(n), data)  # ZipInfo keeps the name as given
                # zipfile.writestr(str) would strip a leading '/', ZipInfo does not.
    else:
        path = tar_file(tmp_path / "d.tar", members)
    with pytest.raises(CoreInputError, match=rf"archive:{name}: absolute member path escapes the archive"):
        load_dataset(path)


def test_checks_run_before_any_image_is_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = archive_mod._decode
    monkeypatch.setattr(archive_mod, "_decode", lambda name, *a: (calls.append(name), real(name, *a))[1])
    members = {f"a{i}.png": png_bytes(image_array()) for i in range(3)} | {
        "../zz.png": png_bytes(image_array())
    }
    with pytest.raises(CoreInputError, match=r"archive:\.\./zz\.png"):
        load_dataset(tar_file(tmp_path / "d.tar", members))
    assert calls == []
    load_dataset(tar_file(tmp_path / "ok.tar", {f"a{i}.png": png_bytes(image_array()) for i in range(3)}))
    assert calls == ["a0.png", "a1.png", "a2.png"]


@pytest.mark.parametrize(
    ("ttype", "match"),
    [
        (
            tarfile.SYMTYPE,
            r"archive:cat/link\.png: is a symbolic link \(to '/etc/passwd'\); links are refused",
        ),
        (tarfile.LNKTYPE, r"archive:cat/link\.png: is a hard link \(to '/etc/passwd'\); links are refused"),
        (tarfile.CHRTYPE, r"archive:cat/link\.png: is a device file; refused"),
        (tarfile.BLKTYPE, r"archive:cat/link\.png: is a device file; refused"),
        (tarfile.FIFOTYPE, r"archive:cat/link\.png: is a FIFO; refused"),
    ],
)
def test_tar_special_members_are_refused(tmp_path: Path, ttype: bytes, match: str) -> None:
    special = tarfile.TarInfo("cat/link.png")
    special.type = ttype
    special.linkname = "/etc/passwd"
    path = tar_with_special(tmp_path / "d.tar", {"cat/ok.png": png_bytes(image_array())}, special)
    with pytest.raises(CoreInputError, match=match):
        load_dataset(path)


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        (stat.S_IFLNK | 0o777, r"archive:link\.png: is a symbolic link"),
        (stat.S_IFCHR | 0o644, r"archive:link\.png: is a device file"),
        (stat.S_IFIFO | 0o644, r"archive:link\.png: is a FIFO or socket"),
    ],
)
def test_zip_special_members_are_refused(tmp_path: Path, mode: int, match: str) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.png", png_bytes(image_array()))
        info = zipfile.ZipInfo("link.png")
        info.create_system = 3  # unix: mode bits in external_attr
        info.external_attr = mode << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(CoreInputError, match=match):
        load_dataset(path)


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", png_bytes(image_array()))
        zf.writestr("a.png", png_bytes(image_array()))
    with pytest.raises(CoreInputError, match=r"archive:a\.png: appears twice"):
        load_dataset(path)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_too_many_members(tmp_path: Path, kind: str) -> None:
    members = {f"{i}.png": png_bytes(image_array()) for i in range(6)}
    path = (
        zip_file(tmp_path / "d.zip", members)
        if kind == "zip"
        else tar_file(tmp_path / "d.tar.gz", members, "w:gz")
    )
    with pytest.raises(CoreInputError, match=r"archive: has more than 5 members \(limit\)"):
        load_dataset(path, limits=ArchiveLimits(max_members=5))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_bomb_member_declared_size(tmp_path: Path, kind: str) -> None:
    """2 MiB of zeros compresses to a few KiB: refused from the declared size, before reading."""
    bomb = b"\0" * (2 * 1024 * 1024)
    members = {"ok.png": png_bytes(image_array()), "bomb.png": bomb}
    path = (
        zip_file(tmp_path / "d.zip", members)
        if kind == "zip"
        else tar_file(tmp_path / "d.tar.gz", members, "w:gz")
    )
    assert path.stat().st_size < 50_000
    with pytest.raises(
        CoreInputError, match=r"archive:bomb\.png: declares 2097152 bytes uncompressed, more than"
    ):
        load_dataset(path, limits=ArchiveLimits(max_member_bytes=1024 * 1024))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_bomb_total_declared_size(tmp_path: Path, kind: str) -> None:
    members = {f"{i}.txt": b"\0" * 100_000 for i in range(5)} | {"a.png": png_bytes(image_array())}
    path = (
        zip_file(tmp_path / "d.zip", members)
        if kind == "zip"
        else tar_file(tmp_path / "d.tar.gz", members, "w:gz")
    )
    with pytest.raises(CoreInputError, match=r"archive: members declare more than 300000 bytes uncompressed"):
        load_dataset(path, limits=ArchiveLimits(max_total_bytes=300_000))


def _patch_zip_sizes(path: Path, name: str, new_size: int) -> None:
    """Rewrite the uncompressed size of ``name`` in both its local and central headers (a lying header)."""
    blob = bytearray(path.read_bytes())
    encoded = name.encode()
    local = blob.find(b"PK\x03\x04")
    while local >= 0:
        nlen = struct.unpack_from("<H", blob, local + 26)[0]
        if bytes(blob[local + 30 : local + 30 + nlen]) == encoded:
            struct.pack_into("<I", blob, local + 22, new_size)
        local = blob.find(b"PK\x03\x04", local + 4)
    central = blob.find(b"PK\x01\x02")
    while central >= 0:
        nlen = struct.unpack_from("<H", blob, central + 28)[0]
        if bytes(blob[central + 46 : central + 46 + nlen]) == encoded:
            struct.pack_into("<I", blob, central + 24, new_size)
        central = blob.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(blob))


def test_zip_header_understating_size_is_caught(tmp_path: Path) -> None:
    """The header says 100 bytes, the deflated data expands to 2 MiB: reading stops at the declared
    size and the member is reported corrupt, never decompressed in full."""
    path = zip_file(
        tmp_path / "d.zip", {"ok.png": png_bytes(image_array()), "bomb.png": b"\0" * (2 * 1024 * 1024)}
    )
    _patch_zip_sizes(path, "bomb.png", 100)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("bomb.png").file_size == 100
    with pytest.raises(CoreInputError, match=r"archive:bomb\.png: corrupt member: Bad CRC-32"):
        load_dataset(path, limits=ArchiveLimits(max_member_bytes=1024 * 1024))


def test_zip_header_overstating_size_is_caught(tmp_path: Path) -> None:
    data = png_bytes(image_array())
    path = zip_file(tmp_path / "d.zip", {"a.png": data}, method=zipfile.ZIP_STORED)
    _patch_zip_sizes(path, "a.png", len(data) + 50)
    with pytest.raises(
        CoreInputError, match=rf"archive:a\.png: header declares {len(data) + 50} bytes but the member "
    ):
        load_dataset(path)


def test_tar_stream_budget_caps_decompressed_bytes(tmp_path: Path) -> None:
    """Skipped members are streamed through too: their bytes count against the decompression cap."""
    members = {"big.bin": b"\0" * 200_000, "a.png": png_bytes(image_array())}
    path = tar_file(tmp_path / "d.tar.gz", members, "w:gz")
    reader = readers_mod._TarReader(path, ArchiveLimits(max_members=1, max_total_bytes=10**9))
    reader.budget = 50_000
    with pytest.raises(CoreInputError, match=r"archive: decompresses to more than 50000 bytes"):
        reader.scan()


def test_decompression_bomb_pixels(tmp_path: Path) -> None:
    big = np.zeros((300, 300), np.uint8)  # compresses to a few hundred bytes
    path = zip_file(tmp_path / "d.zip", {"a.png": png_bytes(image_array()), "big.png": png_bytes(big)})
    with pytest.raises(
        CoreInputError, match=r"archive:big\.png: image is 300x300 = 90000 pixels, more than the limit"
    ):
        load_dataset(path, limits=ArchiveLimits(max_image_pixels=50_000))


def test_decoded_dataset_size_limit(tmp_path: Path) -> None:
    path = zip_file(tmp_path / "d.zip", {f"{i}.png": png_bytes(image_array(10, 10)) for i in range(4)})
    with pytest.raises(CoreInputError, match=r"archive: decoded images would take more than 300 bytes"):
        load_dataset(path, limits=ArchiveLimits(max_dataset_bytes=300))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("d.zip", b"PK\x03\x04 definitely not a zip", r"archive: not a valid zip archive"),
        ("d.zip", b"plain text", r"archive: not a valid zip archive"),
        ("d.tar", b"plain text, not a tar" * 40, r"archive: not a valid tar archive"),
        ("d.tar.gz", b"\x1f\x8b\x08\x00 broken gzip" * 10, r"archive: not a valid tar archive"),
        ("d.tgz", b"", r"archive: not a valid tar archive"),
    ],
)
def test_not_an_archive(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CoreInputError, match=match):
        load_dataset(tmp_path / name)


def test_truncated_tar_gz(tmp_path: Path) -> None:
    path = tar_file(
        tmp_path / "d.tar.gz", {f"{i}.png": png_bytes(image_array(16, 16, 3)) for i in range(8)}, "w:gz"
    )
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CoreInputError, match=r"archive.*(not a valid tar archive|corrupt member)"):
        load_dataset(path)


def test_zip_crc_corruption(tmp_path: Path) -> None:
    data = png_bytes(image_array())
    path = zip_file(tmp_path / "d.zip", {"a.png": data}, method=zipfile.ZIP_STORED)
    blob = bytearray(path.read_bytes())
    at = blob.find(data) + len(data) // 2
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert zlib.crc32(data) != 0
    with pytest.raises(CoreInputError, match=r"archive:a\.png: corrupt member: Bad CRC-32"):
        load_dataset(path)


def test_image_dataset_rejects_bad_tensors() -> None:
    with pytest.raises(CoreInputError, match=r"images: must be a non-empty uint8"):
        ImageDataset(images=torch.zeros(2, 4, 4, 3))
    with pytest.raises(CoreInputError, match=r"labels: must be int64 \(2,\)"):
        ImageDataset(
            images=torch.zeros(2, 4, 4, 3, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.int64)
        )
    with pytest.raises(CoreInputError, match=r"assignments: must be int64"):
        ImageDataset(images=torch.zeros(2, 4, 4, 1, dtype=torch.uint8), assignments=torch.zeros(2))


def test_archive_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"ArchiveLimits\.max_members must be a positive integer, got 0"):
        ArchiveLimits(max_members=0)
