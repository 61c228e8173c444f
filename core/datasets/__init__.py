"""Datasets: validated loading of ``.npz`` arrays and image-folder archives into memory."""

from core.datasets.archive import IMAGE_SUFFIXES, load_archive
from core.datasets.dataset import ArchiveLimits, ImageDataset
from core.datasets.loading import SUPPORTED_SUFFIXES, load_dataset
from core.datasets.npz import load_npz

__all__ = [
    "IMAGE_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "ArchiveLimits",
    "ImageDataset",
    "load_archive",
    "load_dataset",
    "load_npz",
]
