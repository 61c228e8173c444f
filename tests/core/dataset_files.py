"""Files the dataset tests build: images as PNG bytes, zips, tars and npz archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def image_array(h: int = 6, w: int = 6, c: int = 0) -> np.ndarray:
    shape = (h, w) if c == 0 else (h, w, c)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def zip_file(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def tar_file(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def tar_with_special(path: Path, good: dict[str, bytes], special: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in good.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.addfile(special)
    return path


def npz_file(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
