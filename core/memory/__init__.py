"""Memory of a job: the torch-free estimate (``estimate``) and the host's peak resident set (``host``).

Imports no torch, so the API's submit check and the worker's preflight share one estimate.
"""

from core.memory.estimate import (
    GiB,
    MemoryEstimate,
    estimate_job_memory,
    shrink_candidates,
    shrink_floor,
)

__all__ = ["GiB", "MemoryEstimate", "estimate_job_memory", "shrink_candidates", "shrink_floor"]
