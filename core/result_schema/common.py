"""The base model of every result block and the shared field types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Block(BaseModel):
    """A fixed-shape block: an unknown key is a drift between the worker and the schema, so it fails."""

    model_config = ConfigDict(extra="forbid")


class OpenBlock(BaseModel):
    """A block whose keys vary by method or checkpoint: the typed fields are checked, others kept."""

    model_config = ConfigDict(extra="allow")


# json_safe writes a NaN or infinity as null, so every measured float may be null.
Fraction = float | None
