"""Dataset loading from .npz: valid arrays give the right tensors and facts; every defect is refused
with a CoreInputError naming the array or the problem."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import RNG, image_array, npz_file, zip_file

from core.datasets import ArchiveLimits, load_dataset
from core.errors import CoreInputError

# --------------------------------------------------------------------------------------------- npz


def test_npz_valid_nhwc_with_labels_and_facts(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    labels = np.array([0, 2, 2, 1, 0], dtype=np.int32)
    ds = load_dataset(
        npz_file(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    )
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (5, 4, 6, 3)
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.labels is not None and ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 2, 2, 1, 0]
    assert ds.class_names == ["a", "b", "c"]
    assert ds.facts() == {
        "count": 5,
        "height": 4,
        "width": 6,
        "channels": 3,
        "has_labels": True,
        "label_count": 3,
        "has_assignments": False,
        "has_images": True,
        "feature_spaces": {},
    }


def test_npz_rank3_is_one_channel_and_to_float(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (4, 3, 5), dtype=np.uint8)
    ds = load_dataset(npz_file(tmp_path / "d.npz", images=images))
    assert (ds.channels, ds.labels, ds.facts()["label_count"]) == (1, None, None)
    x = ds.to_float("cpu", torch.tensor([2, 0]))
    assert x.shape == (2, 1, 3, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x[0, 0], torch.from_numpy(images[2]).float() / 255)


def test_npz_float_labels_with_whole_values_are_accepted(tmp_path: Path) -> None:
    ds = load_dataset(
        npz_file(
            tmp_path / "d.npz", images=image_array(3, 3, 1)[None].repeat(2, 0), labels=np.array([1.0, 0.0])
        )
    )
    assert ds.labels is not None and ds.labels.tolist() == [1, 0]


def test_npz_assignments_hard_and_probs(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (3, 2, 2), dtype=np.uint8)
    ds = load_dataset(npz_file(tmp_path / "a.npz", images=images, assignments=np.array([1, 0, 1])))
    assert (
        ds.assignments is not None and ds.assignments.dtype == torch.int64 and ds.facts()["has_assignments"]
    )
    probs = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], dtype=np.float64)
    ds = load_dataset(npz_file(tmp_path / "p.npz", images=images, assignment_probs=probs))
    assert ds.assignments is not None and ds.assignments.dtype == torch.float32
    assert torch.allclose(ds.assignments, torch.tensor(probs, dtype=torch.float32))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.zeros((0, 4, 4, 3), np.uint8)}, r"images: is empty"),
        ({"images": np.zeros((2, 4, 4, 3), np.float32)}, r"images: must have dtype uint8, got float32"),
        ({"images": np.zeros((2, 4), np.uint8)}, r"images: must have rank 4 .* got rank 2"),
        (
            {"images": np.zeros((2, 4, 4, 4), np.uint8)},
            r"images: channel count C must be 1 or 3, got 4.*alpha",
        ),
        ({"images": np.zeros((2, 3, 8, 8), np.uint8)}, r"images: channel count .* got 8.*channels-first"),
        ({"labels": np.zeros(2, np.int64)}, r"images: missing.*found keys: labels"),
        (
            {"images": np.zeros((3, 2, 2), np.uint8), "labels": np.zeros(2, np.int64)},
            r"labels: has 2 entries .* 3",
        ),
        (
            {"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([0, -1])},
            r"labels: must be >= 0; found -1",
        ),
        (
            {"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([0, 0.5])},
            r"labels: must be integers.*0\.5",
        ),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([0, np.nan])}, r"labels: contains NaN"),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([[0, 1]])}, r"labels: must have shape"),
        (
            {"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([True, False])},
            r"labels: must be integers",
        ),
        (
            {
                "images": np.zeros((2, 2, 2), np.uint8),
                "assignment_probs": np.array([[0.5, np.nan], [0.5, 0.5]]),
            },
            r"assignment_probs: contains NaN",
        ),
        (
            {"images": np.zeros((2, 2, 2), np.uint8), "assignment_probs": np.array([[0.5, 0.6], [0.5, 0.5]])},
            r"assignment_probs: rows must sum to 1; row 0 sums to 1\.1",
        ),
        (
            {
                "images": np.zeros((2, 2, 2), np.uint8),
                "assignment_probs": np.array([[1.5, -0.5], [0.5, 0.5]]),
            },
            r"assignment_probs: contains negative",
        ),
        (
            {"images": np.zeros((2, 2, 2), np.uint8), "assignment_probs": np.ones((3, 2)) / 2},
            r"assignment_probs: has 3 rows",
        ),
        (
            {
                "images": np.zeros((2, 2, 2), np.uint8),
                "assignments": np.array([0, 1]),
                "assignment_probs": np.ones((2, 2)) / 2,
            },
            r"either 'assignments' or 'assignment_probs'",
        ),
        (
            {
                "images": np.zeros((2, 2, 2), np.uint8),
                "labels": np.array([0, 2]),
                "class_names": np.array(["a", "b"]),
            },
            r"class_names: has 2 names but labels go up to 2",
        ),
    ],
)
def test_npz_defects(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    path = npz_file(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CoreInputError, match=match):
        load_dataset(path)


@pytest.mark.parametrize("key", ["images", "labels"])
def test_npz_object_arrays_are_refused(tmp_path: Path, key: str) -> None:
    arrays = {"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([0, 1])}
    arrays[key] = np.array([{"a": 1}, None], dtype=object)
    np.savez(tmp_path / "o.npz", **arrays)  # savez pickles object arrays
    with pytest.raises(
        CoreInputError, match=rf"^{key}: is an object array \(pickled Python objects\); refused"
    ):
        load_dataset(tmp_path / "o.npz")


def test_npz_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"this is not an npz file at all")
    with pytest.raises(CoreInputError, match=r"npz: not a valid \.npz file"):
        load_dataset(tmp_path / "x.npz")


def test_npz_limits(tmp_path: Path) -> None:
    path = npz_file(tmp_path / "d.npz", images=np.zeros((10, 10, 10), np.uint8), a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(CoreInputError, match=r"npz: has more than 2 members \(limit\)"):
        load_dataset(path, limits=ArchiveLimits(max_members=2))
    with pytest.raises(
        CoreInputError, match=r"npz: arrays total \d+ bytes uncompressed, more than the limit 500"
    ):
        load_dataset(path, limits=ArchiveLimits(max_total_bytes=500))


def test_npz_header_claiming_more_data_than_the_member_holds(tmp_path: Path) -> None:
    """A .npy header is what numpy allocates from: a huge claimed shape must be refused unread."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2, 2), np.uint8))
    header["shape"] = (10**9, 64, 64)
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    out.write(np.zeros(8, np.uint8).tobytes())
    zip_file(tmp_path / "lie.npz", {"images.npy": out.getvalue()})
    with pytest.raises(CoreInputError, match=r"images: header claims \d+ bytes of data but the member holds"):
        load_dataset(tmp_path / "lie.npz")


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "d.rar").write_bytes(b"x")
    with pytest.raises(CoreInputError, match=r"dataset: unsupported file type 'd\.rar'"):
        load_dataset(tmp_path / "d.rar")
    with pytest.raises(CoreInputError, match=r"dataset: file not found"):
        load_dataset(tmp_path / "nope.npz")
