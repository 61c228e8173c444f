"""``load_dataset``: one entry point that picks the reader from the file name."""

from __future__ import annotations

from pathlib import Path

from core.datasets.archive import load_archive
from core.datasets.dataset import ArchiveLimits, ImageDataset
from core.datasets.npz import load_npz
from core.errors import CoreInputError

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SUPPORTED_SUFFIXES = (".npz", ".zip", *_TAR_SUFFIXES)


def load_dataset(path: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> ImageDataset:
    """Load and validate a dataset file: ``.npz``, ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` (also bz2/xz).

    Raises CoreInputError naming the field or archive member for every defect.
    """
    path = Path(path)
    if not path.is_file():
        raise CoreInputError("dataset", f"file not found: {path.name}")
    name = path.name.lower()
    if name.endswith(".npz"):
        return load_npz(path, limits=limits)
    if name.endswith(".zip"):
        return load_archive(path, limits=limits, kind="zip")
    if name.endswith(_TAR_SUFFIXES):
        return load_archive(path, limits=limits, kind="tar")
    raise CoreInputError(
        "dataset", f"unsupported file type {path.name!r}; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
    )
