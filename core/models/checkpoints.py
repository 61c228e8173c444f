"""Loading uploaded checkpoints into our models, and safetensors export.

Reading files safely lives in core.models.checkpoint_io, telling what a file holds in
core.models.checkpoint_layout (ViTs: core.models.vit_layout); this module builds the model the facts
describe and loads the weights strictly, renamed to our keys. Both names are re-exported here, the
package's entry point for checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from core.errors import CoreInputError
from core.models.backbones import BACKBONE_NAMES, VIT, build_backbone, vit_config_of
from core.models.checkpoint_io import (
    FIELD,
    SAFETENSORS_SUFFIX,
    TORCH_SUFFIXES,
    RawCheckpoint,
    key_problems,
    read_checkpoint,
)
from core.models.checkpoint_layout import (
    CheckpointInfo,
    CheckpointKind,
    analyse_checkpoint,
    choose_backbone,
    inspect_checkpoint,
)
from core.models.heads import ClusteringModel, EmbeddingModel
from core.models.statement import CheckpointStatement
from core.models.vit_layout import model_state_dict
from core.spec.common import NORMALISATION_PRESETS

__all__ = [
    "SAFETENSORS_SUFFIX",
    "TORCH_SUFFIXES",
    "CheckpointInfo",
    "CheckpointKind",
    "choose_backbone",
    "inspect_checkpoint",
    "load_clustering_model",
    "load_embedding_model",
    "save_safetensors",
]

Stats = Sequence[float] | float | None


def _load_state(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Strict load with every mismatch named (``key_problems``), values checked finite."""
    expected = model.state_dict()
    problems = key_problems({k: v.shape for k, v in expected.items()}, sd)
    if problems:
        raise CoreInputError(FIELD, "does not match the detected architecture: " + "; ".join(problems))
    converted: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        target = expected[k]
        if target.is_floating_point():
            if v.is_complex():
                raise CoreInputError(f"{FIELD}:{k}", f"expected a real tensor, got {v.dtype}")
            v = v.to(target.dtype)
            if not torch.isfinite(v).all():
                raise CoreInputError(f"{FIELD}:{k}", "contains NaN or infinite values")
        else:
            v = v.to(target.dtype)
        converted[k] = v
    model.load_state_dict(converted, strict=False)


def _read(
    path: Path, kind: CheckpointKind, statement: CheckpointStatement | None
) -> tuple[RawCheckpoint, CheckpointInfo]:
    raw = read_checkpoint(Path(path))
    info = analyse_checkpoint(raw, statement)
    if info.kind != kind:
        have = (
            "an embedding model (contrastive_head.*)"
            if info.kind == "embedding"
            else ("a clustering model (cluster_head.*)")
        )
        need = (
            "an embedding model (contrastive_head.*)"
            if kind == "embedding"
            else ("a clustering model (cluster_head.*)")
        )
        raise CoreInputError(FIELD, f"is {have}, but {need} is needed")
    return raw, info


def _backbone_for(info: CheckpointInfo, backbone: str | None) -> tuple[nn.Module, int]:
    """A fresh backbone of the job's choice among those the weights fit (``backbone``), else of the
    file's own; a ViT with the architecture its tensors describe."""
    candidates = info.backbone_candidates or (info.backbone,)
    name = info.backbone if backbone is None else backbone
    if name not in candidates:
        raise CoreInputError(
            "backbone", f"the job expects {backbone!r} but the checkpoint holds {info.backbone!r}"
        )
    return build_backbone(name, in_channels=info.in_channels, vit=info.vit)  # type: ignore[arg-type]


def _stats(info: CheckpointInfo, mean: Stats, std: Stats) -> dict[str, Stats]:
    """The caller's mean/std, else the file's metadata, else the layout's preset (None: defaults)."""
    own: tuple[Stats, Stats] = (info.mean, info.std)
    if info.mean is None and info.layout_normalisation is not None:
        own = NORMALISATION_PRESETS[info.layout_normalisation]
    return {"mean": mean if mean is not None else own[0], "std": std if std is not None else own[1]}


def _file_state(raw: RawCheckpoint, info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """The file's tensors under our models' keys."""
    return raw.state_dict if info.vit is None else model_state_dict(raw.state_dict, info.vit["layout"])


def load_clustering_model(
    path: Path,
    *,
    num_clusters: int | None,
    head: int | None,
    backbone: str | None,
    mean: Stats = None,
    std: Stats = None,
    statement: CheckpointStatement | None = None,
) -> ClusteringModel:
    """Load a clustering checkpoint and keep one head (``head`` if given, else the file's choice).

    ``num_clusters`` (when not None) is the job's expectation and ``backbone`` its choice among the
    backbones the weights fit (e.g. resnet18_cifar or resnet18_stl; None: the stated one, else the
    first); a mismatch is a CoreInputError naming both. ``mean``/``std`` set the normalisation
    (default: the file's metadata, else its layout's preset (a ViT: ImageNet's), else 0.5/0.25).
    Returns a model in eval mode with ``nheads == 1``.
    """
    raw, info = _read(path, "clustering", statement)
    net, dim = _backbone_for(info, backbone)
    if num_clusters is not None and num_clusters != info.num_clusters:
        raise CoreInputError(
            "num_clusters",
            f"the job expects {num_clusters} clusters but the checkpoint's heads have {info.num_clusters}",
        )
    selected = info.head if head is None else head
    if not 0 <= selected < info.nheads:
        raise CoreInputError(
            "head",
            f"head {selected} is out of range: the checkpoint has {info.nheads} head(s) "
            f"(0..{info.nheads - 1})",
        )
    assert info.num_clusters is not None
    model = ClusteringModel(
        net,
        dim,
        info.num_clusters,
        nheads=info.nheads,
        **_stats(info, mean, std),
    )
    _load_state(model, _file_state(raw, info))
    model.cluster_head = nn.ModuleList([model.cluster_head[selected]])
    model.nheads = 1
    model.active_head = 0
    return model.eval()


def load_embedding_model(
    path: Path,
    *,
    backbone: str | None = None,
    mean: Stats = None,
    std: Stats = None,
    statement: CheckpointStatement | None = None,
) -> EmbeddingModel:
    """Load an embedding checkpoint (SimCLR layout, or a bare ViT without a projection head); returns
    an EmbeddingModel in eval mode. ``backbone``, ``mean``, ``std`` as for ``load_clustering_model``."""
    raw, info = _read(path, "embedding", statement)
    net, dim = _backbone_for(info, backbone)
    assert info.features_dim is not None
    model = EmbeddingModel(
        net,
        dim,
        features_dim=info.features_dim,
        projection=info.projection_head is not False,
        **_stats(info, mean, std),
    )
    _load_state(model, _file_state(raw, info))
    return model.eval()


def save_safetensors(model: ClusteringModel | EmbeddingModel, path: Path) -> None:
    """Write the state dict (contiguous CPU tensors) and metadata (kind, backbone, num_clusters, nheads,
    head, in_channels, mean, std; a ViT's num_heads, which its weights do not tell) to ``path``;
    ``load_*_model`` reads it back."""
    from safetensors.torch import save_file

    if isinstance(model, ClusteringModel):
        kind, num_clusters = "clustering", str(model.num_clusters)
    elif isinstance(model, EmbeddingModel):
        kind, num_clusters = "embedding", ""
    else:
        raise TypeError(f"expected ClusteringModel or EmbeddingModel, got {type(model).__name__}")
    backbone = model.backbone_name
    if backbone not in (*BACKBONE_NAMES, VIT):
        raise ValueError(f"model.backbone_name must be one of {BACKBONE_NAMES} or vit, got {backbone!r}")
    metadata = {
        "format": "ruc-service",
        "kind": kind,
        "backbone": str(backbone),
        "num_clusters": num_clusters,
        "in_channels": str(getattr(model.backbone, "in_channels", "")),
        "mean": json.dumps(model.mean.flatten().tolist()),
        "std": json.dumps(model.std.flatten().tolist()),
    }
    vit = vit_config_of(model.backbone)
    if vit is not None:
        metadata["num_heads"] = str(vit["heads"])
    if isinstance(model, ClusteringModel):
        metadata["nheads"] = str(model.nheads)
        metadata["head"] = str(model.active_head)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
