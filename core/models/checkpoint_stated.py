"""What an uploaded checkpoint's metadata or the upload's fields state, checked against its weights.

The statements decide what the tensors cannot (core.models.checkpoint_layout): the backbone among
variants with identical weights, and the input normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from core.errors import CoreInputError
from core.models.backbones import ModelBackbone
from core.models.checkpoint_io import FIELD
from core.models.normalisation import check_stats, from_spec
from core.models.statement import CheckpointStatement
from core.spec import BackboneName
from core.spec.common import NormalisationSpec

BackboneSource = Literal["keys", "metadata", "upload", "image_size"]


def metadata_stats(metadata: Mapping[str, str], in_channels: int) -> tuple[tuple[float, ...], ...] | None:
    """(mean, std) from our safetensors metadata, validated like any statement; None when absent."""
    given = [key for key in ("mean", "std") if key in metadata]
    if not given:
        return None
    if len(given) == 1:
        missing = "std" if given == ["mean"] else "mean"
        raise CoreInputError(f"{FIELD}.metadata.{missing}", f"missing while {given[0]} is given")
    values = []
    for key in ("mean", "std"):
        try:
            parsed = json.loads(metadata[key])
        except ValueError:
            parsed = None
        if not isinstance(parsed, list):
            raise CoreInputError(
                f"{FIELD}.metadata.{key}", f"expected a JSON list of numbers, got {metadata[key]!r}"
            )
        values.append(parsed)
    return check_stats(values[0], values[1], channels=in_channels, field=f"{FIELD}.metadata")


def stated_backbone(
    candidates: tuple[ModelBackbone, ...], metadata: Mapping[str, str], stated: BackboneName | None
) -> tuple[ModelBackbone, BackboneSource]:
    """The backbone among ``candidates`` that the file's metadata or the upload states."""
    meta = metadata.get("backbone")
    if meta is not None and meta not in candidates:
        raise CoreInputError(
            f"{FIELD}.metadata.backbone", f"says {meta!r} but the tensors are a {candidates[0]!r} model"
        )
    if stated is not None and stated not in candidates:
        raise CoreInputError(
            "backbone",
            f"the upload states {stated!r} but the weights are a {' / '.join(candidates)} model",
        )
    if stated is not None and meta is not None and stated != meta:
        raise CoreInputError(
            "backbone", f"the upload states {stated!r} but the file's metadata says {meta!r}"
        )
    if stated is not None:
        return stated, "upload"
    if meta is not None:
        return meta, "metadata"  # type: ignore[return-value]
    return candidates[0], "keys" if len(candidates) == 1 else "image_size"


def _no_dataset_here() -> tuple[tuple[float, ...], tuple[float, ...]]:
    raise AssertionError("the 'dataset' preset is resolved by the job, not at upload")


def stated_normalisation(
    statement: CheckpointStatement,
    metadata_stats: tuple[tuple[float, ...], ...] | None,
    in_channels: int,
    layout_preset: str | None,
) -> dict[str, Any] | None:
    if statement.normalisation is not None:
        if statement.normalisation.preset == "dataset":
            return {"preset": "dataset", "mean": None, "std": None, "source": "upload"}
        norm = from_spec(
            statement.normalisation,
            "upload",
            channels=in_channels,
            field="normalisation",
            dataset_stats=_no_dataset_here,
        )
        return norm.as_dict()
    if metadata_stats is not None:
        mean, std = metadata_stats
        return {"preset": None, "mean": list(mean), "std": list(std), "source": "checkpoint_metadata"}
    if layout_preset is not None:
        spec = NormalisationSpec(preset=layout_preset)  # type: ignore[arg-type]
        return from_spec(
            spec, "checkpoint_layout", channels=in_channels, field="", dataset_stats=_no_dataset_here
        ).as_dict()
    return None
