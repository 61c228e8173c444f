"""Datasets: validated loading of ``.npz`` arrays and image-folder archives into memory.

The names below are imported on first use, so the torch-free modules of this package
(``limits``, ``validation``, ``npz_header``, ``zip_guard``) load without torch: the API inspects
uploads with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.datasets.archive import IMAGE_SUFFIXES, load_archive
    from core.datasets.dataset import ImageDataset
    from core.datasets.limits import ArchiveLimits
    from core.datasets.loading import SUPPORTED_SUFFIXES, load_dataset
    from core.datasets.npz import load_npz

_EXPORTS = {
    "IMAGE_SUFFIXES": "core.datasets.archive",
    "load_archive": "core.datasets.archive",
    "ArchiveLimits": "core.datasets.limits",
    "ImageDataset": "core.datasets.dataset",
    "SUPPORTED_SUFFIXES": "core.datasets.loading",
    "load_dataset": "core.datasets.loading",
    "load_npz": "core.datasets.npz",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "ArchiveLimits",
    "ImageDataset",
    "load_archive",
    "load_dataset",
    "load_npz",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core.datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
