"""RUC's resumable training state and its atomic checkpoint file.

A checkpoint holds everything the next epoch reads: both networks and optimisers, the clean set
and pseudo-labels after refurbishing, each network's prediction table, every random stream, the epoch
count and the metrics so far, plus a fingerprint of the inputs so that a file written for a
different job (other data, labels, clean set, spec or seed) is never resumed by mistake.
The learning rate is a pure function of the epoch (cosine), so there is no scheduler state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_torch_save
from core.spec import RefineSpec

FORMAT_VERSION = 2  # 2: per-network prediction tables replace recorded confidences


@dataclass
class RucState:
    """Snapshot after ``epoch`` completed epochs (tensors on the CPU).

    nets / optimizers: one state dict per network (1 or 2).
    clean_mask: (N,) bool; pseudo_labels: (N,) int64 (refurbished labels included).
    table: (V, N, K) float32, each network's softmax on the unaugmented images at the end of its
        latest pass; ready: (V,) bool, which networks have completed a pass.
    rng: {"torch_generator": ByteTensor, "numpy": dict} (the bit generator state of the Beta draws).
    """

    fingerprint: str
    epoch: int
    nets: list[dict[str, torch.Tensor]]
    optimizers: list[dict[str, Any]]
    clean_mask: torch.Tensor
    pseudo_labels: torch.Tensor
    table: torch.Tensor
    ready: torch.Tensor
    rng: dict[str, Any]
    per_epoch: list[dict[str, Any]] = field(default_factory=list)
    version: int = FORMAT_VERSION


def input_fingerprint(
    *,
    images_shape: tuple[int, ...],
    pseudo_labels: torch.Tensor,
    clean_mask: torch.Tensor,
    spec: RefineSpec,
    num_clusters: int,
    seed: int,
) -> str:
    """sha256 over the image shape, the initial labels and clean set, the spec, K and the seed."""
    h = hashlib.sha256()
    meta = {
        "images_shape": list(images_shape),
        "num_clusters": num_clusters,
        "seed": seed,
        "spec": spec.model_dump(mode="json"),
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(pseudo_labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    h.update(clean_mask.detach().to("cpu", torch.bool).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_state(state: RucState, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (``core.atomic``): the old file or the new, never a torn one."""
    atomic_torch_save(asdict(state), Path(path))


def load_state(path: Path) -> RucState:
    """Read a checkpoint written by ``save_state`` (safe unpickler: tensors and plain containers only).

    Raises ValueError when the file is not a RUC checkpoint of this format version.
    """
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a RUC checkpoint of format version {FORMAT_VERSION}")
    return RucState(**raw)
