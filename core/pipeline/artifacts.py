"""The job's artifacts: the refined ensemble (safetensors), assignments.csv and result.json.

Each is written atomically (``core.atomic``). ``refined_ensemble.safetensors`` holds every
network's state dict prefixed ``net1.``/``net2.`` and the metadata to rebuild them (``input``:
images, CNN backbones; features, MLP heads whose ``layout`` is in the metadata);
``assignments.csv`` has per image its base cluster and confidence, refined cluster and confidence,
and whether it is in the final clean set.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write_bytes
from core.errors import CoreInputError
from core.models import (
    FEATURE_BACKBONE,
    ClusteringModel,
    FeatureClusteringModel,
    build_backbone,
    vit_config_of,
)
from core.ruc import RucOutput
from core.spec import JobSpec


def json_safe(obj: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays become Python ones, NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_result(result: dict[str, Any], path: Path) -> None:
    """result.json: indented, strict JSON (``result`` must already be ``json_safe``)."""
    atomic_write_bytes(path, json.dumps(result, indent=1, allow_nan=False).encode())


def write_assignments(
    path: Path, base_probs: np.ndarray, refined_probs: np.ndarray, clean: np.ndarray
) -> None:
    """assignments.csv from base and refined probabilities (N, K) and the final clean mask (N,)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "base_cluster", "base_confidence", "refined_cluster", "refined_confidence", "clean"])
    bp, bc = base_probs.argmax(1), base_probs.max(1)
    rp, rc = refined_probs.argmax(1), refined_probs.max(1)
    for i in range(base_probs.shape[0]):
        w.writerow([i, int(bp[i]), f"{bc[i]:.6f}", int(rp[i]), f"{rc[i]:.6f}", int(bool(clean[i]))])
    atomic_write_bytes(path, buf.getvalue().encode())


def save_ensemble(
    ruc: RucOutput,
    base_model: ClusteringModel,
    spec: JobSpec,
    path: Path,
    *,
    image_shape: tuple[int, int, int] | None = None,
) -> None:
    """refined_ensemble.safetensors: every network of ``ruc`` and what ``read_ensemble`` needs.

    image_shape: (H, W, C) of the job's images; with the run's effective batch size (which fixes
    its inference chunks) it lets ``core.predict.Predictor`` assign new images as the job did.
    """
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for i, net in enumerate(ruc.models):
        for key, v in net.state_dict().items():
            tensors[f"net{i + 1}.{key}"] = v.detach().cpu().contiguous()
    first = ruc.models[0]
    metadata = {
        "format": "ruc-service",
        "kind": "ruc_ensemble",
        "nets": str(len(ruc.models)),
        "backbone": str(first.backbone_name),
        "num_clusters": str(first.num_clusters),
        "base_backbone": str(base_model.backbone_name),
        "spec": spec.model_dump_json(),
        "batch_size": str(ruc.effective.get("batch_size", "")),
    }
    if isinstance(first, FeatureClusteringModel):
        # MLP heads on features: the per-dimension statistics are in the state dict (buffers)
        metadata["input"] = "features"
        metadata["layout"] = json.dumps(first.layout())
    else:
        metadata["input"] = "images"
        metadata["in_channels"] = str(getattr(first.backbone, "in_channels", ""))
        metadata["mean"] = json.dumps(first.mean.flatten().tolist())
        metadata["std"] = json.dumps(first.std.flatten().tolist())
        vit = vit_config_of(first.backbone)
        if vit is not None:
            metadata["vit"] = json.dumps(vit)
        if image_shape is not None:
            metadata["image_shape"] = json.dumps(list(image_shape))
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_ensemble(path: Path, *, device: str | torch.device = "cpu") -> tuple[ClusteringModel, ...]:
    """Rebuild the networks of a ``refined_ensemble.safetensors`` artifact (eval mode)."""
    return read_ensemble(path, device=device)[0]


def read_ensemble(
    path: Path, *, device: str | torch.device = "cpu"
) -> tuple[tuple[ClusteringModel, ...], dict[str, str]]:
    """The networks of a ``refined_ensemble.safetensors`` artifact (eval mode) and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if meta.get("kind") != "ruc_ensemble":
        raise CoreInputError("checkpoint", "is not a refined RUC ensemble")
    nets = []
    for i in range(int(meta["nets"])):
        prefix = f"net{i + 1}."
        sd = {key[len(prefix) :]: v for key, v in tensors.items() if key.startswith(prefix)}
        net: ClusteringModel
        if meta["backbone"] == FEATURE_BACKBONE:
            net = FeatureClusteringModel.from_layout(json.loads(meta["layout"]))
        else:
            bb, dim = build_backbone(
                meta["backbone"],  # type: ignore[arg-type]
                in_channels=int(meta["in_channels"]),
                vit=json.loads(meta["vit"]) if "vit" in meta else None,
            )
            net = ClusteringModel(
                bb, dim, int(meta["num_clusters"]), mean=json.loads(meta["mean"]), std=json.loads(meta["std"])
            )
        net.load_state_dict(sd)
        nets.append(net.to(device).eval())
    return tuple(nets), meta
