"""What every stage of one job reads: the spec, the data, the device, the work folder, the hooks."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.datasets import ImageDataset
from core.hooks import RunHooks
from core.spec import JobSpec, ResolvedInputs


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class JobContext:
    """One job's inputs; ``notes`` collects the warnings that also go out as events."""

    spec: JobSpec
    dataset: ImageDataset
    device: torch.device
    work_dir: Path
    checkpoint_paths: dict[str, Path]
    hooks: RunHooks
    resume: bool
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    inputs: ResolvedInputs | None = None  # what the networks read; set by the loading stage
    # The memory preflight's cap in bytes (core/pipeline/preflight.py): None skips the preflight,
    # 0 takes the device's own limit (CUDA: its free memory; CPU: none, measure only).
    memory_limit_bytes: int | None = None
    preflight: dict[str, Any] | None = None  # its report, set by the refining stage

    def warn(self, message: str) -> None:
        """A note in the result and a ``warning`` event."""
        self.notes.append(message)
        self.hooks.on_event("warning", message)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Announce stage ``name`` through the hooks (after a stop check) and time it."""
        self.hooks.check_stop(name)
        self.hooks.on_stage(name)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 4)
