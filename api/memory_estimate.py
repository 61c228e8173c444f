"""The submit check's memory estimate: ``core.memory.estimate``, the one definition the worker's
memory preflight (``core/ruc/preflight.py``) also reports, re-exported here for the API's callers."""

from core.memory.estimate import (
    BACKBONE_FEATURE_DIM,
    BACKBONE_PARAMETERS,
    GiB,
    MemoryEstimate,
    default_backbone,
    estimate_at_shrink_floor,
    estimate_job_memory,
    shrink_floor,
    vit_activation_bytes,
    vit_tokens,
)

__all__ = [
    "BACKBONE_FEATURE_DIM",
    "BACKBONE_PARAMETERS",
    "GiB",
    "MemoryEstimate",
    "default_backbone",
    "estimate_at_shrink_floor",
    "estimate_job_memory",
    "shrink_floor",
    "vit_activation_bytes",
    "vit_tokens",
]
