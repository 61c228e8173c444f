"""Dataset loading from zip/tar archives of images: good layouts give the right tensors, labels and
facts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import image_array, png_bytes, tar_file, zip_file
from PIL import Image

from core.datasets import load_dataset

# ------------------------------------------------------------------------------------ good archives


def test_zip_class_folders_in_wrapper_with_junk(tmp_path: Path) -> None:
    pics = {f"data/{c}/{i}.png": image_array() for c in ("dog", "cat", "bird") for i in (1, 0)}
    members = {k: png_bytes(v) for k, v in pics.items()}
    members |= {
        "data/README.txt": b"notes",
        "data/cat/.DS_Store": b"\0\0",
        "__MACOSX/data/cat/._0.png": b"apple double",
        "data/labels.csv": b"a,b",
    }
    ds = load_dataset(zip_file(tmp_path / "d.zip", members))
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    order = sorted(pics)  # by (class, file)
    assert torch.equal(ds.images[:, :, :, 0], torch.from_numpy(np.stack([pics[k] for k in order])))
    assert ds.facts()["label_count"] == 3 and ds.channels == 1
    assert any("skipped 4 non-image file(s)" in n and "README.txt" in n for n in ds.notes)


@pytest.mark.parametrize(("suffix", "mode"), [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_flat_folder_has_no_labels(tmp_path: Path, suffix: str, mode: str) -> None:
    pics = {f"img_{i}.png": image_array(5, 7, 3) for i in range(4)}
    ds = load_dataset(tar_file(tmp_path / f"d{suffix}", {k: png_bytes(v) for k, v in pics.items()}, mode))
    assert ds.labels is None and ds.class_names is None
    assert tuple(ds.images.shape) == (4, 5, 7, 3)
    assert torch.equal(ds.images, torch.from_numpy(np.stack([pics[k] for k in sorted(pics)])))


def test_single_wrapper_folder_of_images_is_flat(tmp_path: Path) -> None:
    ds = load_dataset(
        zip_file(
            tmp_path / "d.zip",
            {"photos/a.png": png_bytes(image_array()), "photos/b.png": png_bytes(image_array())},
        )
    )
    assert ds.labels is None and ds.n == 2


def test_tar_class_folders_with_directory_entries(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "d.tar", "w") as tf:
        for c in ("1", "0"):
            d = tarfile.TarInfo(c)
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
            data = png_bytes(image_array())
            info = tarfile.TarInfo(f"{c}/x.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = load_dataset(tmp_path / "d.tar")
    assert ds.class_names == ["0", "1"] and ds.labels is not None and ds.labels.tolist() == [0, 1]


def test_colour_modes_mixed_with_gray_become_rgb(tmp_path: Path) -> None:
    gray, rgb = image_array(4, 4), image_array(4, 4, 3)
    rgba = np.concatenate([image_array(4, 4, 3), np.full((4, 4, 1), 7, np.uint8)], axis=2)
    pal = Image.fromarray(image_array(4, 4, 3)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    members = {
        "a.png": png_bytes(gray),
        "b.png": png_bytes(rgb),
        "c.png": png_bytes(rgba),
        "d.png": buf.getvalue(),
    }
    ds = load_dataset(zip_file(tmp_path / "d.zip", members))
    assert ds.channels == 3
    assert torch.equal(ds.images[0], torch.from_numpy(np.repeat(gray[..., None], 3, axis=2)))
    assert torch.equal(ds.images[1], torch.from_numpy(rgb))
    assert torch.equal(ds.images[2], torch.from_numpy(rgba[..., :3]))
    assert torch.equal(ds.images[3], torch.from_numpy(np.array(pal.convert("RGB"))))
    assert any("1 grayscale image(s) converted to RGB" in n for n in ds.notes)


def test_grayscale_modes_stay_one_channel(tmp_path: Path) -> None:
    la = np.stack([image_array(4, 4), image_array(4, 4)], axis=2)
    wide = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")  # 16-bit grayscale PNG
    members = {"a.png": png_bytes(image_array(4, 4)), "b.png": png_bytes(la, "LA"), "c.png": buf.getvalue()}
    ds = load_dataset(zip_file(tmp_path / "d.zip", members))
    assert ds.channels == 1
    assert torch.equal(ds.images[2, :, :, 0], torch.from_numpy(np.round(wide / 257).astype(np.uint8)))
