"""What a client states about an uploaded checkpoint that its weights cannot tell: the backbone variant
(SCAN's CIFAR and STL-10 ResNet-18s share every parameter) and the input normalisation it was
trained with.

The API passes the upload's raw fields (strings) to ``parse_statement``; upload validation writes
the validated statement next to the file (``statement_path``) and jobs read it back from there, so a
job sees exactly what validation accepted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from core.errors import CoreInputError
from core.spec.common import BackboneName, NormalisationSpec

STATEMENT_SUFFIX = ".statement.json"
# Raw upload fields, as the API receives them.
STATEMENT_FIELDS = ("backbone", "normalisation", "mean", "std")


@dataclass(frozen=True)
class CheckpointStatement:
    """backbone: the stated variant or None. normalisation: the stated preset or mean/std, or None."""

    backbone: BackboneName | None = None
    normalisation: NormalisationSpec | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form (also the sidecar file's content)."""
        norm = self.normalisation.model_dump(exclude_none=True) if self.normalisation else None
        return {"backbone": self.backbone, "normalisation": norm}

    @property
    def empty(self) -> bool:
        return self.backbone is None and self.normalisation is None


def _numbers(field: str, text: str) -> list[float]:
    """``"0.49,0.48,0.45"`` or ``"[0.49, 0.48, 0.45]"`` -> floats (finiteness is checked later)."""
    body = text.strip().removeprefix("[").removesuffix("]")
    try:
        return [float(part) for part in body.split(",") if part.strip()]
    except ValueError:
        raise CoreInputError(field, f"expected comma-separated numbers, got {text!r}") from None


def _normalisation(raw: Mapping[str, Any]) -> NormalisationSpec | None:
    preset, mean, std = raw.get("normalisation"), raw.get("mean"), raw.get("std")
    if preset is None and mean is None and std is None:
        return None
    data: dict[str, Any] = {}
    if preset is not None:
        data["preset"] = preset
    for name, value in (("mean", mean), ("std", std)):
        if value is not None:
            data[name] = _numbers(name, value) if isinstance(value, str) else value
    try:
        return NormalisationSpec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = first["loc"]
        field = "normalisation" if not loc or loc[0] == "preset" else str(loc[0])
        raise CoreInputError(field, first["msg"].removeprefix("Value error, ")) from None


def parse_statement(raw: Mapping[str, Any] | None) -> CheckpointStatement:
    """Validate an upload's fields (``backbone``, ``normalisation`` preset, ``mean``/``std``).

    Raises CoreInputError naming the field: an unknown backbone or preset, numbers that do not parse,
    non-finite values, std <= 0, a list of neither 1 nor 3 values, a preset given with mean/std.
    """
    raw = raw or {}
    unknown = sorted(set(raw) - set(STATEMENT_FIELDS))
    if unknown:
        raise CoreInputError(unknown[0], f"unknown field; the upload accepts {', '.join(STATEMENT_FIELDS)}")
    backbone = raw.get("backbone")
    if backbone is not None and backbone not in get_args(BackboneName):
        raise CoreInputError(
            "backbone", f"unknown backbone {backbone!r}; choose one of {', '.join(get_args(BackboneName))}"
        )
    return CheckpointStatement(backbone, _normalisation(raw))


def statement_path(checkpoint: Path) -> Path:
    """Where the validated statement of ``checkpoint`` lives: beside it, ``<name>.statement.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + STATEMENT_SUFFIX)


def write_statement(checkpoint: Path, statement: CheckpointStatement) -> None:
    """Write (or, for an empty statement, remove) the sidecar of ``checkpoint``.

    A plain write suffices: validation writes it before the upload is ``ready`` and jobs read only
    ready uploads, so no reader can see it half-written.
    """
    path = statement_path(checkpoint)
    if statement.empty:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps(statement.as_dict()))


def read_statement(checkpoint: Path) -> CheckpointStatement:
    """The statement validation wrote beside ``checkpoint`` (an empty one when there is none)."""
    path = statement_path(checkpoint)
    if not path.is_file():
        return CheckpointStatement()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CoreInputError(
            "checkpoint", "its stored statement (backbone, normalisation) is unreadable"
        ) from None
    norm = data.get("normalisation") or {}
    return parse_statement(
        {
            "backbone": data.get("backbone"),
            "normalisation": norm.get("preset"),
            "mean": norm.get("mean"),
            "std": norm.get("std"),
        }
    )
