"""The base stage's cache ``work_dir/base.pt``: a resumed job never redoes or changes its base.

The file is keyed by a fingerprint of what determines the base output (images, feature arrays,
uploaded assignments, the base spec (and for a feature job the refine fields its base network
follows), K, the seed and the uploaded checkpoints' size and mtime); a file of another
fingerprint, format version or a torn file is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from core.atomic import atomic_torch_save
from core.clustering.base import BaseOutput
from core.datasets import ImageDataset
from core.models import (
    FEATURE_BACKBONE,
    ClusteringModel,
    FeatureClusteringModel,
    build_backbone,
    vit_config_of,
)
from core.pipeline.artifacts import json_safe
from core.spec import JobSpec

BASE_CACHE_VERSION = 1


def base_fingerprint(spec: JobSpec, dataset: ImageDataset, checkpoint_paths: dict[str, Path]) -> str:
    """sha256 over images, features, assignments, base spec, K, seed and uploaded checkpoints
    (size, mtime)."""
    h = hashlib.sha256()
    meta: dict[str, object] = {
        "version": BASE_CACHE_VERSION,
        "base": spec.base.model_dump(mode="json"),
        "num_clusters": spec.num_clusters,
        "seed": spec.seed,
    }
    if dataset.images is not None:
        meta["shape"] = list(dataset.images.shape)
    if dataset.features:
        r = spec.refine
        meta["features"] = dataset.feature_dims()
        # a feature job's base network is built and augmented by these refine fields
        meta["refine"] = {
            "input": r.input,
            "feature_hidden_dim": r.feature_hidden_dim,
            "feature_views": r.feature_views.model_dump(mode="json"),
        }
    for key in (spec.base.embedding_checkpoint_id, spec.base.clustering_checkpoint_id):
        if key is not None and key in checkpoint_paths and Path(checkpoint_paths[key]).is_file():
            st = Path(checkpoint_paths[key]).stat()
            meta[f"ckpt:{key}"] = [st.st_size, st.st_mtime_ns]
    h.update(json.dumps(meta, sort_keys=True).encode())
    if dataset.images is not None:
        h.update(dataset.images.detach().cpu().contiguous().numpy().tobytes())
    for values in dataset.features.values():
        h.update(values.detach().cpu().contiguous().numpy().tobytes())
    if dataset.assignments is not None:
        h.update(dataset.assignments.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_base(base: BaseOutput, path: Path, fingerprint: str) -> None:
    """Write ``base`` (model weights and layout, pseudo-labels, probs, embedding, info) atomically."""
    m = base.model
    atomic_torch_save(
        {
            "version": BASE_CACHE_VERSION,
            "fingerprint": fingerprint,
            "backbone": m.backbone_name,
            "vit": vit_config_of(m.backbone),
            "in_channels": int(getattr(m.backbone, "in_channels", 0)),
            "backbone_dim": int(m.backbone_dim),
            "num_clusters": int(m.num_clusters),
            "mean": m.mean.detach().flatten().cpu().tolist(),
            "std": m.std.detach().flatten().cpu().tolist(),
            "layout": m.layout() if isinstance(m, FeatureClusteringModel) else {},
            "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
            "pseudo_labels": base.pseudo_labels.detach().cpu(),
            "probs": base.probs.detach().cpu(),
            "embedding": base.embedding.detach().cpu(),
            "info": json.dumps(json_safe(base.info)),
        },
        path,
    )


def load_base(path: Path, fingerprint: str, device: torch.device) -> BaseOutput | None:
    """The cached base output if ``path`` holds one for this fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file is recomputed, never trusted
        return None
    if (
        not isinstance(d, dict)
        or d.get("version") != BASE_CACHE_VERSION
        or d.get("fingerprint") != fingerprint
    ):
        return None
    model: ClusteringModel
    if d["backbone"] == FEATURE_BACKBONE:
        model = FeatureClusteringModel.from_layout(d["layout"])  # statistics come with the state dict
    else:
        backbone, dim = build_backbone(d["backbone"], in_channels=d["in_channels"], vit=d.get("vit"))
        model = ClusteringModel(backbone, dim, d["num_clusters"], mean=d["mean"], std=d["std"])
    model.load_state_dict(d["state_dict"])
    model = model.to(device).eval()
    return BaseOutput(
        model=model,
        pseudo_labels=d["pseudo_labels"].to(device),
        probs=d["probs"].to(device),
        embedding=d["embedding"].to(device),
        info=json.loads(d["info"]),
    )
