"""Datasets of precomputed embeddings: ``features`` / ``features_<name>`` arrays in an npz, alone or
with images and labels; every defect is an error naming the array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.datasets import ArchiveLimits, ImageDataset, load_dataset
from core.errors import CoreInputError

RNG = np.random.default_rng(0)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_features_only_dataset_lists_its_spaces_in_facts(tmp_path: Path) -> None:
    clip = RNG.normal(size=(6, 5))  # float64: stored as float32
    dino = RNG.normal(size=(6, 3)).astype(np.float16)
    plain = RNG.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 1, 0, 2, 2])
    ds = load_dataset(
        _npz(tmp_path / "f.npz", features_dino=dino, features_clip=clip, features=plain, labels=labels)
    )
    assert ds.images is None and not ds.has_images and ds.n == 6
    assert list(ds.features) == ["default", "clip", "dino"]  # default first, then by name
    assert all(f.dtype == torch.float32 for f in ds.features.values())
    assert torch.allclose(ds.features["clip"], torch.from_numpy(clip).float())
    assert ds.facts() == {
        "count": 6,
        "height": None,
        "width": None,
        "channels": None,
        "has_labels": True,
        "label_count": 3,
        "has_assignments": False,
        "has_images": False,
        "feature_spaces": {"default": 4, "clip": 5, "dino": 3},
    }
    with pytest.raises(CoreInputError, match=r"images: the dataset has no images"):
        ds.to_float("cpu")


def test_images_with_features_keep_both(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    ds = load_dataset(_npz(tmp_path / "b.npz", images=images, features_clip=RNG.normal(size=(4, 7))))
    facts = ds.facts()
    assert (facts["height"], facts["channels"], facts["has_images"]) == (3, 1, True)
    assert facts["feature_spaces"] == {"clip": 7} and ds.notes == []


def test_a_dataset_needs_images_or_features() -> None:
    with pytest.raises(CoreInputError, match=r"images: a dataset needs images or at least one feature"):
        ImageDataset()


def _nan3() -> np.ndarray:
    x = RNG.normal(size=(5, 4))
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    x[3, 1] = -np.inf
    return x


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"features_clip": _nan3()}, r"^features_clip: 3 non-finite values \(NaN, inf .* first in row 1\)"),
        # finite in float64, infinite once stored as float32
        ({"features": np.array([[1.0, 2.0], [1e300, 0.0]])}, r"^features: 1 non-finite value \("),
        (
            {"images": np.zeros((1000, 2, 2), np.uint8), "features_dino": np.zeros((999, 3), np.float32)},
            r"^features_dino: has 999 rows, images has 1000$",
        ),
        (
            {"features_a": np.zeros((4, 2), np.float32), "features_b": np.zeros((5, 2), np.float32)},
            r"^features_b: has 5 rows, features_a has 4$",
        ),
        (
            {"features": np.zeros((3, 2), np.float32), "labels": np.zeros(2, np.int64)},
            r"^labels: has 2 entries but there are 3 rows in features$",
        ),
        (
            {"features": np.zeros((3, 2), np.int64)},
            r"^features: must be a float array \(N, D\), got dtype int64",
        ),
        (
            {"features_clip": np.zeros(5, np.float32)},
            r"^features_clip: must be 2-D \(N, D\), got shape \(5,\)",
        ),
        ({"features": np.zeros((2, 3, 4), np.float32)}, r"^features: must be 2-D"),
        ({"features": np.zeros((0, 3), np.float32)}, r"^features: is empty \(0 rows\)"),
        ({"features": np.zeros((3, 0), np.float32)}, r"^features: has 0 dimensions; 1 to 16384 are allowed"),
        ({"features_Clip": np.zeros((3, 2), np.float32)}, r"^features_Clip: feature space names must be"),
        ({"features_": np.zeros((3, 2), np.float32)}, r"^features_: feature space names must be"),
        ({"features_default": np.zeros((3, 2), np.float32)}, r"^features_default: clashes with 'features'"),
        ({"labels": np.zeros(3, np.int64)}, r"^images: missing: .*'images' array and/or 'features'"),
    ],
)
def test_feature_defects_name_the_array(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(CoreInputError, match=match):
        load_dataset(_npz(tmp_path / "x.npz", **arrays))


@pytest.mark.parametrize(
    ("limits", "arrays", "match"),
    [
        (
            ArchiveLimits(max_feature_dim=8),
            {"features": np.zeros((2, 9), np.float32)},
            r"has 9 dimensions; 1 to 8",
        ),
        (
            ArchiveLimits(max_samples=4),
            {"features_clip": np.zeros((5, 2), np.float32)},
            r"^features_clip: has 5 rows, more than the limit of 4",
        ),
        # float16 arrays are checked at their float32 size (what jobs hold): 2 x 10 x 100 x 4 bytes
        (
            ArchiveLimits(max_dataset_bytes=6000),
            {"features_a": np.zeros((10, 100), np.float16), "features_b": np.zeros((10, 100), np.float16)},
            r"^features_b: feature arrays total more than the limit of 6000 bytes",
        ),
    ],
)
def test_feature_size_limits(tmp_path: Path, limits: ArchiveLimits, arrays: dict, match: str) -> None:
    with pytest.raises(CoreInputError, match=match):
        load_dataset(_npz(tmp_path / "x.npz", **arrays), limits=limits)


def test_too_many_feature_spaces_are_refused(tmp_path: Path) -> None:
    arrays = {f"features_s{i}": np.zeros((2, 1), np.float32) for i in range(17)}
    with pytest.raises(CoreInputError, match=r"^features: 17 feature spaces, more than the limit of 16"):
        load_dataset(_npz(tmp_path / "x.npz", **arrays))
