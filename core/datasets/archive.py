"""Image-folder archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, also bz2/xz tars) read safely.

Layout: ``class/xxx.png`` (sorted class folder names give evaluation labels 0..L-1 and
``class_names``) or a flat folder of images (no labels). One top-level wrapper directory around
either layout is removed (so a lone ``data/`` folder of images is a flat folder, not one class).
Images are ordered by path. Skipped without error (listed in ``notes``): files whose suffix is not
an image suffix (``README.txt``, ``labels.csv``), hidden files and folders (``.DS_Store``, macOS
``._x.png``) and anything under ``__MACOSX/``.

Safety: members are read by ``core.datasets.archive_readers`` (headers first, nothing extracted to
disk, every limit counted). Each image's pixel count is checked from its header before it is
decoded, and PIL is restricted to common raster formats (no EPS/Ghostscript and the like).

Decoding: uint8; grayscale (1, L, LA, 16-bit I) stays one channel unless any image in the dataset
is colour, then every image becomes RGB; RGBA/P/CMYK and other colour modes become RGB (alpha dropped).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.datasets.archive_readers import (
    ARCHIVE_FIELD,
    IMAGE_SUFFIXES,
    ArchiveKind,
    Member,
    is_image,
    member_field,
    open_reader,
)
from core.datasets.dataset import ArchiveLimits, ImageDataset
from core.errors import CoreInputError

__all__ = ["IMAGE_SUFFIXES", "load_archive"]

_PIL_FORMATS = tuple(sorted(set(IMAGE_SUFFIXES.values())))
_GRAY_MODES = ("1", "L", "LA", "La")
_LIST_SHOWN = 5


def _layout(images: list[Member]) -> tuple[list[tuple[str, ...]], bool]:
    """Relative paths after removing one wrapper folder, and whether class folders give labels."""
    paths = [m.parts for m in images]
    if len({len(p) for p in paths}) == 1 and len(paths[0]) >= 2 and len({p[0] for p in paths}) == 1:
        paths = [p[1:] for p in paths]  # a single top-level folder wraps everything
    depths = {len(p) for p in paths}
    if depths == {1}:
        return paths, False
    if depths == {2}:
        return paths, True
    by_depth = {len(p): m.name for p, m in zip(paths, images, strict=True)}
    examples = " and ".join(repr(by_depth[d]) for d in sorted(by_depth)[:2])
    raise CoreInputError(
        ARCHIVE_FIELD,
        "unsupported layout: images must all be 'class/image' or all at the top level (optionally "
        f"inside one wrapper folder); found {examples}",
    )


def _to_array(img: Image.Image) -> tuple[np.ndarray, bool]:
    """(H, W) uint8 for grayscale or (H, W, 3) uint8 for colour, and whether it is colour."""
    mode = img.mode
    if mode in _GRAY_MODES:
        return np.asarray(img.convert("L"), dtype=np.uint8), False
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grayscale (PNG/TIFF): rescale 0..65535 to 0..255 instead of clipping.
        wide = np.asarray(img).astype(np.float64)
        return np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), False
    if mode == "F":
        raise ValueError("32-bit float images (mode F) are not supported")
    return np.asarray(img.convert("RGB"), dtype=np.uint8), True


def _decode(name: str, data: bytes, limits: ArchiveLimits) -> tuple[np.ndarray, bool]:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies below; PIL's global warning is noise.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
                w, h = img.size
                if w * h > limits.max_image_pixels:
                    raise CoreInputError(
                        member_field(name),
                        f"image is {w}x{h} = {w * h} pixels, more than the limit {limits.max_image_pixels} "
                        "(decompression bomb?)",
                    )
                if w == 0 or h == 0:
                    raise CoreInputError(member_field(name), f"image has zero size {w}x{h}")
                img.load()
                return _to_array(img)
    except CoreInputError:
        raise
    except Image.DecompressionBombError as err:
        raise CoreInputError(
            member_field(name), f"image has too many pixels (decompression bomb?): {err}"
        ) from None
    except UnidentifiedImageError:
        # PIL's own text names the in-memory buffer by its address, which is no business of a client.
        raise CoreInputError(
            member_field(name),
            f"unreadable image: UnidentifiedImageError: not a {'/'.join(_PIL_FORMATS)} image",
        ) from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad input; all mean "unreadable"
        raise CoreInputError(member_field(name), f"unreadable image: {type(err).__name__}: {err}") from None


def _shown(names: list[str]) -> str:
    more = len(names) - _LIST_SHOWN
    return ", ".join(names[:_LIST_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def load_archive(
    path: Path, *, limits: ArchiveLimits = ArchiveLimits(), kind: ArchiveKind | None = None
) -> ImageDataset:
    """Load an image-folder archive into an ImageDataset.

    kind: "zip" or "tar" (any compression, detected from the content); None sniffs the file.
    """
    reader = open_reader(path, limits, kind)
    members = reader.scan()
    images = [m for m in members if is_image(m.parts)]
    skipped = [m.name for m in members if not is_image(m.parts)]
    if not images:
        raise CoreInputError(
            ARCHIVE_FIELD,
            f"contains no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"{len(skipped)} other file(s) skipped",
        )
    rel, labelled = _layout(images)
    order = sorted(range(len(images)), key=lambda i: rel[i])
    images = [images[i] for i in order]
    rel = [rel[i] for i in order]
    index = {m.name: i for i, m in enumerate(images)}
    n = len(images)

    class_names: list[str] | None = None
    labels: torch.Tensor | None = None
    if labelled:
        class_names = sorted({p[0] for p in rel})
        class_of = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([class_of[p[0]] for p in rel], dtype=torch.int64)

    buf: np.ndarray | None = None
    first = ""
    seen = 0
    gray = 0
    for name, data in reader.read(set(index)):
        arr, colour = _decode(name, data, limits)
        h, w = arr.shape[:2]
        if buf is None:
            first = name
            buf = np.zeros((n, h, w, 3 if colour else 1), dtype=np.uint8)
        elif (h, w) != buf.shape[1:3]:
            raise CoreInputError(
                member_field(name),
                f"image is {w}x{h} (WxH) but {first} is {buf.shape[2]}x{buf.shape[1]}; "
                "all images must have one size",
            )
        if buf.nbytes > limits.max_dataset_bytes or (colour and buf.nbytes * 3 > limits.max_dataset_bytes):
            raise CoreInputError(
                ARCHIVE_FIELD, f"decoded images would take more than {limits.max_dataset_bytes} bytes (limit)"
            )
        if colour and buf.shape[3] == 1:
            # First colour image: every image (earlier gray ones included) becomes RGB.
            rgb = np.empty((n, h, w, 3), dtype=np.uint8)
            rgb[:] = buf
            buf = rgb
        gray += not colour
        buf[index[name]] = arr.reshape(h, w, -1)
        seen += 1
    if buf is None or seen != n:
        raise CoreInputError(ARCHIVE_FIELD, f"read {seen} of {n} images; the archive changed or is corrupt")

    notes: list[str] = []
    if skipped:
        notes.append(f"skipped {len(skipped)} non-image file(s): {_shown(sorted(skipped))}")
    if gray and buf.shape[3] == 3:
        notes.append(f"{gray} grayscale image(s) converted to RGB because the others are colour")
    return ImageDataset(images=torch.from_numpy(buf), labels=labels, class_names=class_names, notes=notes)
