"""The upload memory bombs of tests/upload_bombs.py are refused by their readers before they allocate."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from upload_bombs import deflated_pt, many_entries_zip, pax_tar_gz, zero_itemsize_npz

import core.datasets.archive_readers as readers_mod
from core.datasets import ArchiveLimits, load_dataset
from core.errors import CoreInputError

# ------------------------------------------------------------------ memory bombs (tests/upload_bombs.py)


def test_npz_zero_size_dtype_is_refused(tmp_path: Path) -> None:

    path = zero_itemsize_npz(tmp_path / "d.npz", count=1000)
    with pytest.raises(CoreInputError, match=r"class_names: has a zero-size dtype '\|S0'; refused"):
        load_dataset(path)


def test_tar_extended_header_is_capped_before_it_is_read(tmp_path: Path) -> None:

    path = pax_tar_gz(tmp_path / "d.tar.gz", header_bytes=2 * readers_mod.MAX_TAR_HEADER_BYTES)
    with pytest.raises(
        CoreInputError, match=r"archive: has an extended \(pax or long-name\) header of 2097152"
    ):
        load_dataset(path)


@pytest.mark.parametrize("suffix", [".zip", ".npz"])
@pytest.mark.parametrize("claimed", [None, 1], ids=["end-record-true", "end-record-lies"])
def test_zip_entry_count_is_checked_before_zipfile_lists_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, claimed: int | None
) -> None:

    def no_listing(*_a: object, **_k: object) -> None:
        raise AssertionError("zipfile.ZipFile opened before the entry count was checked")

    path = many_entries_zip(tmp_path / f"d{suffix}", entries=70_000, claimed=claimed)
    monkeypatch.setattr(zipfile, "ZipFile", no_listing)
    field = "npz" if suffix == ".npz" else "archive"
    with pytest.raises(CoreInputError, match=rf"{field}: has more than 1000 members \(limit\)"):
        load_dataset(path, limits=ArchiveLimits(max_members=1000))


def test_zip64_entry_count_is_read_from_the_zip64_end_record(tmp_path: Path) -> None:
    from core.datasets.zip_guard import check_zip_directory

    path = many_entries_zip(tmp_path / "d.zip", entries=70_000)  # > 0xFFFF: zip64 records
    assert check_zip_directory(path, max_members=100_000, field="archive") == 70_000
    assert len(zipfile.ZipFile(path).infolist()) == 70_000


def test_deflated_torch_records_are_refused_before_torch_load(tmp_path: Path) -> None:
    from core.models import inspect_checkpoint

    path = deflated_pt(tmp_path / "m.pt", inflated_bytes=2 * 1024**2)
    with pytest.raises(
        CoreInputError, match=r"checkpoint:archive/data.pkl: record is compressed \(method 8\)"
    ):
        inspect_checkpoint(path)
