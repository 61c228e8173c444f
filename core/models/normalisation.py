"""Which ``(x - mean) / std`` a network applies to its [0, 1] inputs, and where that choice came from.

SCAN trains every model with its data set's statistics (core.spec.common.NORMALISATION_PRESETS), so a
checkpoint read with other values sees shifted inputs and every confidence moves. Precedence, highest
first: the job spec (``base.normalisation``), the upload's statement, the file's own metadata (our
safetensors exports), the checkpoint layout's own (ImageNet's for torchvision, timm and DINOv2 ViTs),
the dataset's per-channel statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from core.errors import CoreInputError
from core.spec.common import NORMALISATION_PRESETS, NormalisationSpec

NormalisationSource = Literal["spec", "upload", "checkpoint_metadata", "checkpoint_layout", "dataset"]
# Dataset statistics: uint8 images are summed this many at a time (float64 per chunk), so the
# memory beyond the images themselves is one chunk's float copy whatever N is.
STATS_CHUNK_IMAGES = 4096
# A constant channel has std 0; dividing by it would blow up every input.
MIN_STD = 1e-3


@dataclass(frozen=True)
class Normalisation:
    """mean/std: per-channel (or single) statistics of [0, 1] pixels; preset: the named preset if one
    was used ("dataset" for computed statistics); source: who decided."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: NormalisationSource
    preset: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable description for the job's result."""
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source, "preset": self.preset}


def check_stats(
    mean: Sequence[float], std: Sequence[float], *, channels: int | None, field: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate statistics: 1 value or ``channels`` values each (1 or 3 when channels is None), all
    finite, std > 0. Raises CoreInputError naming ``field.mean`` or ``field.std``."""
    allowed = (1, 3) if channels is None else tuple(sorted({1, channels}))
    out: list[tuple[float, ...]] = []
    for name, values in (("mean", mean), ("std", std)):
        where = f"{field}.{name}" if field else name
        try:
            vals = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise CoreInputError(where, f"expected a list of numbers, got {values!r}") from None
        if len(vals) not in allowed:
            raise CoreInputError(
                where, f"must have {' or '.join(map(str, allowed))} value(s), got {len(vals)}"
            )
        if not all(math.isfinite(v) for v in vals):
            raise CoreInputError(where, f"must be finite numbers, got {list(vals)}")
        if name == "std" and any(v <= 0 for v in vals):
            raise CoreInputError(where, f"must be > 0, got {list(vals)}")
        out.append(vals)
    return out[0], out[1]


@torch.no_grad()
def image_statistics(
    images: torch.Tensor, *, channels_last: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population, std >= MIN_STD) of images scaled to [0, 1].

    images: uint8 (N, H, W, C) with ``channels_last`` (a dataset's storage), or float (N, C, H, W)
    in [0, 1] without. Sums run in float64 over chunks of STATS_CHUNK_IMAGES images.
    """
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    dims = (0, 1, 2) if channels_last else (0, 2, 3)
    c = images.shape[-1] if channels_last else images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, images.shape[0], STATS_CHUNK_IMAGES):
        chunk = images[s : s + STATS_CHUNK_IMAGES].to(torch.float64) / scale
        total += chunk.sum(dim=dims).cpu()
        total_sq += (chunk * chunk).sum(dim=dims).cpu()
    count = images.numel() / c
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(MIN_STD)
    return tuple(mean.tolist()), tuple(std.tolist())


def from_spec(
    ns: NormalisationSpec,
    source: NormalisationSource,
    *,
    channels: int,
    field: str,
    dataset_stats: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]],
) -> Normalisation:
    if ns.preset == "dataset":
        mean, std = dataset_stats()
        return Normalisation(mean, std, source, "dataset")
    if ns.preset is not None:
        mean, std = NORMALISATION_PRESETS[ns.preset]
        if channels != len(mean):
            raise CoreInputError(
                f"{field}.preset", f"{ns.preset!r} has {len(mean)} channels but the images have {channels}"
            )
        return Normalisation(mean, std, source, ns.preset)
    assert ns.mean is not None and ns.std is not None  # NormalisationSpec's validator
    mean, std = check_stats(ns.mean, ns.std, channels=channels, field=field)
    return Normalisation(mean, std, source)


def resolve_normalisation(
    *,
    spec: NormalisationSpec | None,
    upload: NormalisationSpec | None,
    metadata: tuple[tuple[float, ...], tuple[float, ...]] | None,
    channels: int,
    dataset_stats: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]],
    layout: str | None = None,
    spec_field: str = "base.normalisation",
    upload_field: str = "normalisation",
) -> Normalisation:
    """The normalisation a network gets, highest first: ``spec`` (the job's), ``upload`` (the
    checkpoint upload's statement), ``metadata`` (the file's own mean/std), ``layout`` (the preset
    the checkpoint's layout is trained with), the dataset's statistics (``dataset_stats()``, called
    only when needed). Raises CoreInputError naming the field whose values do not fit ``channels``."""
    common = {"channels": channels, "dataset_stats": dataset_stats}
    if spec is not None:
        return from_spec(spec, "spec", field=spec_field, **common)  # type: ignore[arg-type]
    if upload is not None:
        return from_spec(upload, "upload", field=upload_field, **common)  # type: ignore[arg-type]
    if metadata is not None:
        mean, std = check_stats(*metadata, channels=channels, field="checkpoint.metadata")
        return Normalisation(mean, std, "checkpoint_metadata")
    if layout is not None:
        mean, std = NORMALISATION_PRESETS[layout]
        if len(mean) == channels:
            return Normalisation(mean, std, "checkpoint_layout", layout)
    mean, std = dataset_stats()
    return Normalisation(mean, std, "dataset", "dataset")
