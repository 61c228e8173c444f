"""What an uploaded checkpoint holds, read from its key names and shapes (never from code in the file).

Accepted state dicts follow SCAN's layout: ``backbone.* + cluster_head.<i>.*`` (clustering; SCAN's
``scan_*``/``selflabel_*`` files) or ``backbone.* + contrastive_head.*`` (embedding; ``simclr_*``).
A Vision Transformer (torchvision, timm or DINOv2 names, core.models.vit_layout) may be the
backbone, or the whole file: a bare ViT, or ``backbone.*`` ViT keys alone, is an embedding model
without a projection head whose embedding is the class token after the final norm. ViT files are
checked key by key at inspection; ResNet files when a job loads them.

Some backbones cannot be told apart by their weights: SCAN's CIFAR and STL-10 ResNet-18s have the
same parameters and differ only in pooling. For those the variant comes from a statement (the
file's own metadata or the upload's fields); failing that, ``choose_backbone`` decides by image size
at job time, as SCAN decides by data set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.errors import CoreInputError
from core.models.backbones import VIT, ModelBackbone, check_input_size, scan_variant_for
from core.models.checkpoint_io import FIELD, RawCheckpoint, name_keys, read_checkpoint
from core.models.checkpoint_stated import (
    BackboneSource,
    metadata_stats,
    stated_backbone,
    stated_normalisation,
)
from core.models.statement import CheckpointStatement
from core.models.vit_layout import (
    BACKBONE_PREFIX,
    HEAD_PREFIXES,
    check_keys,
    key_report,
    read_config,
    split_backbone,
    to_native,
    vit_facts,
    vit_layout,
)
from core.spec import BackboneName

CheckpointKind = Literal["clustering", "embedding"]
_HEAD_KEY = re.compile(r"^cluster_head\.(\d+)\.(weight|bias)$")
# Backbones whose state dicts are identical; the first is the choice when nothing else decides.
_SAME_WEIGHTS: dict[BackboneName, tuple[BackboneName, ...]] = {
    "resnet18_cifar": ("resnet18_cifar", "resnet18_stl"),
}
# torchvision's, timm's and DINOv2's ViT weights are trained on ImageNet-normalised inputs.
VIT_NORMALISATION = "imagenet"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds.

    ``head`` is the selected head: the file's own ``head`` entry (SCAN stores its lowest-loss head),
    else 0. ``nheads`` is 0 for an embedding model. ``features_dim`` is the projection size of an
    embedding model (None for clustering); ``backbone_dim`` is D. ``mean``/``std`` come from our
    safetensors metadata (None otherwise). ``backbone_candidates`` are the backbones the weights fit;
    ``backbone`` is the stated one, else the first candidate, and ``backbone_source`` says which
    (``image_size``: undecided until a job sees its images). ``normalisation`` is the stated
    normalisation (upload fields, else metadata) as reported to clients, or None.
    """

    kind: CheckpointKind
    backbone: BackboneName
    num_clusters: int | None
    nheads: int
    head: int
    in_channels: int
    features_dim: int | None
    backbone_dim: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    backbone_source: BackboneSource = "keys"
    backbone_candidates: tuple[ModelBackbone, ...] = ()
    normalisation: dict[str, Any] | None = None
    projection_head: bool | None = None
    vit: dict[str, Any] | None = None
    keys: dict[str, Any] | None = None
    layout_normalisation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable facts (for the API's checkpoint record)."""
        d = asdict(self)
        for key in ("mean", "std", "backbone_candidates"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


def _block_indices(keys: Sequence[str], layer: str) -> set[int]:
    return {int(k.split(".")[1]) for k in keys if k.startswith(layer + ".") and k.split(".")[1].isdigit()}


def _detect_backbone(bb: Mapping[str, torch.Tensor]) -> tuple[BackboneName, int]:
    """Backbone name (first of its same-weights group) and input channels from ``backbone.*`` keys
    (prefix removed)."""
    if "blocks.0.conv.weight" in bb:
        w = bb["blocks.0.conv.weight"]
        if w.ndim != 4:
            raise CoreInputError(
                f"{FIELD}:backbone.blocks.0.conv.weight", f"expected 4-d, got {tuple(w.shape)}"
            )
        return "small_cnn", int(w.shape[1])
    w = bb.get("conv1.weight")
    if w is None:
        raise CoreInputError(
            FIELD,
            "unrecognised backbone: no backbone.conv1.weight (ResNet) or backbone.blocks.0.conv.weight "
            f"(small_cnn); backbone keys start with {name_keys(sorted(bb))}",
        )
    if w.ndim != 4 or w.shape[0] != 64:
        raise CoreInputError(
            f"{FIELD}:backbone.conv1.weight", f"expected shape (64, C, k, k), got {tuple(w.shape)}"
        )
    depth = tuple(len(_block_indices(list(bb), f"layer{i}")) for i in range(1, 5))
    kernel = int(w.shape[-1])
    name: BackboneName | None = None
    if kernel == 3 and depth == (2, 2, 2, 2):
        name = "resnet18_cifar"
    elif kernel == 7 and "layer1.0.conv3.weight" in bb and depth == (3, 4, 6, 3):
        name = "resnet50"
    elif kernel == 7 and depth == (2, 2, 2, 2):
        name = "resnet18"
    elif kernel == 7 and depth == (3, 4, 6, 3):
        name = "resnet34"
    if name is None:
        raise CoreInputError(
            FIELD,
            f"unsupported ResNet: {kernel}x{kernel} stem with blocks per stage {depth}; supported: "
            "resnet18_cifar / resnet18_stl (3x3 stem, 2-2-2-2), resnet18 (7x7, 2-2-2-2), resnet34 "
            "(7x7, 3-4-6-3), resnet50 (7x7, bottleneck 3-4-6-3)",
        )
    return name, int(w.shape[1])


def _embedding_facts(sd: Mapping[str, torch.Tensor], proj_keys: list[str], backbone: str, dim: int) -> int:
    """features_dim of SCAN's mlp contrastive head."""
    w0, w2 = sd.get("contrastive_head.0.weight"), sd.get("contrastive_head.2.weight")
    if w0 is None or w2 is None:
        raise CoreInputError(
            FIELD,
            "contrastive_head must be SCAN's mlp head (contrastive_head.0.weight and "
            f"contrastive_head.2.weight); found {name_keys(sorted(proj_keys))}",
        )
    if w2.ndim != 2 or w2.shape[1] != dim:
        raise CoreInputError(
            f"{FIELD}:contrastive_head.2.weight",
            f"expected shape (features_dim, {dim}) for {backbone}, got {tuple(w2.shape)}",
        )
    return int(w2.shape[0])


def _clustering_facts(
    sd: Mapping[str, torch.Tensor], head_keys: list[str], backbone: str, dim: int, file_head: int | None
) -> tuple[int, int, int]:
    """(num_clusters, nheads, selected head) of linear cluster heads 0..nheads-1."""
    bad = [k for k in head_keys if not _HEAD_KEY.match(k)]
    if bad:
        raise CoreInputError(FIELD, f"cluster heads must be linear layers; unexpected {name_keys(bad)}")
    indices = sorted({int(_HEAD_KEY.match(k).group(1)) for k in head_keys})  # type: ignore[union-attr]
    nheads = len(indices)
    if indices != list(range(nheads)):
        raise CoreInputError(FIELD, f"cluster head indices must be 0..{nheads - 1}, found {indices}")
    sizes: dict[int, int] = {}
    for i in indices:
        w = sd.get(f"cluster_head.{i}.weight")
        if w is None or w.ndim != 2 or w.shape[1] != dim:
            found = None if w is None else tuple(w.shape)
            raise CoreInputError(
                f"{FIELD}:cluster_head.{i}.weight",
                f"expected shape (num_clusters, {dim}) for {backbone}, got {found}",
            )
        sizes[i] = int(w.shape[0])
    if len(set(sizes.values())) != 1:
        raise CoreInputError(FIELD, f"cluster heads disagree on the number of clusters: {sizes}")
    head = file_head if file_head is not None else 0
    if not 0 <= head < nheads:
        raise CoreInputError(
            f"{FIELD}.head", f"the file selects head {head}, but it has {nheads} head(s) (0..{nheads - 1})"
        )
    return sizes[0], nheads, head


@dataclass(frozen=True)
class _Backbone:
    detected: ModelBackbone
    in_channels: int
    dim: int
    vit: dict[str, Any] | None = None
    keys: dict[str, Any] | None = None


def _backbone_facts(bb: Mapping[str, torch.Tensor], metadata: Mapping[str, str], prefix: str) -> _Backbone:
    layout = vit_layout(bb)
    if layout is None:
        detected, in_channels = _detect_backbone(bb)
        return _Backbone(detected, in_channels, {"resnet50": 2048, "small_cnn": 128}.get(detected, 512))
    state = to_native(bb, layout, prefix=prefix)
    config, heads_source = read_config(state, metadata)
    check_keys(state, config)
    return _Backbone(
        VIT, config.in_channels, config.dim, vit_facts(state, config, heads_source), key_report(state)
    )


def _heads_and_kind(
    sd: Mapping[str, torch.Tensor], wrapped: bool, is_vit: bool
) -> tuple[list[str], list[str], CheckpointKind]:
    head_keys = [k for k in sd if k.startswith("cluster_head.")] if wrapped else []
    proj_keys = [k for k in sd if k.startswith("contrastive_head.")] if wrapped else []
    if head_keys and proj_keys:
        raise CoreInputError(
            FIELD, "has both cluster_head.* and contrastive_head.* keys; cannot tell its kind"
        )
    if not head_keys and not proj_keys and not is_vit:
        raise CoreInputError(
            FIELD,
            "neither cluster_head.* (clustering model) nor contrastive_head.* (embedding model) keys found",
        )
    return head_keys, proj_keys, "clustering" if head_keys else "embedding"


def analyse_checkpoint(raw: RawCheckpoint, statement: CheckpointStatement | None = None) -> CheckpointInfo:
    """Facts of a read checkpoint, checked against its metadata and the upload's ``statement``."""
    statement = statement or CheckpointStatement()
    sd = raw.state_dict
    bb, wrapped = split_backbone(sd)
    if not bb:
        raise CoreInputError(
            FIELD,
            "no backbone.* keys: expected SCAN's layout (backbone.*, cluster_head.<i>.* or "
            "contrastive_head.*) or a torchvision / timm / DINOv2 ViT; found "
            f"{name_keys(sorted(sd))}",
        )
    if wrapped and vit_layout(bb) is not None:
        extra = [k for k in sd if not k.startswith((BACKBONE_PREFIX, *HEAD_PREFIXES))]
        if extra:
            raise CoreInputError(FIELD, f"unexpected {name_keys(extra)} beside the ViT backbone")
    head_keys, proj_keys, found_kind = _heads_and_kind(sd, wrapped, vit_layout(bb) is not None)
    backbone_facts = _backbone_facts(bb, raw.metadata, BACKBONE_PREFIX if wrapped else "")
    detected, in_channels, dim = backbone_facts.detected, backbone_facts.in_channels, backbone_facts.dim
    if in_channels not in (1, 3):
        raise CoreInputError(FIELD, f"backbone input channels must be 1 or 3, found {in_channels}")
    kind = raw.metadata.get("kind")
    if kind is not None and kind != found_kind:
        raise CoreInputError(
            f"{FIELD}.metadata.kind", f"says {kind!r} but the tensors are a {found_kind!r} model"
        )
    candidates = _SAME_WEIGHTS.get(detected, (detected,))  # type: ignore[call-overload]
    backbone, source = stated_backbone(candidates, raw.metadata, statement.backbone)
    stats = metadata_stats(raw.metadata, in_channels)
    layout_preset = VIT_NORMALISATION if detected == VIT and in_channels == 3 else None
    common: dict[str, Any] = {
        "backbone": backbone,
        "in_channels": in_channels,
        "backbone_dim": dim,
        "mean": stats[0] if stats else None,
        "std": stats[1] if stats else None,
        "backbone_source": source,
        "backbone_candidates": candidates,
        "normalisation": stated_normalisation(statement, stats, in_channels, layout_preset),
        "vit": backbone_facts.vit,
        "keys": backbone_facts.keys,
        "layout_normalisation": layout_preset,
    }
    if found_kind == "embedding":
        features_dim = _embedding_facts(sd, proj_keys, detected, dim) if proj_keys else dim
        return CheckpointInfo(
            "embedding",
            num_clusters=None,
            nheads=0,
            head=0,
            features_dim=features_dim,
            projection_head=bool(proj_keys),
            **common,
        )
    k, nheads, head = _clustering_facts(sd, head_keys, detected, dim, raw.file_head)
    return CheckpointInfo("clustering", num_clusters=k, nheads=nheads, head=head, features_dim=None, **common)


def inspect_checkpoint(path: Path, *, statement: CheckpointStatement | None = None) -> CheckpointInfo:
    """Read a checkpoint safely and describe it (kind, backbone, clusters, heads, channels,
    normalisation), checked against the upload's ``statement``.

    Raises CoreInputError for unreadable, unsafe, unrecognised or contradicted files.
    """
    return analyse_checkpoint(read_checkpoint(Path(path)), statement)


def choose_backbone(
    info: CheckpointInfo,
    *,
    spec_backbone: BackboneName | None,
    height: int,
    width: int,
    field: str,
) -> tuple[ModelBackbone, str]:
    """The backbone a job builds for this checkpoint and what decided it: ``spec`` (the job's
    ``base.backbone``, which must fit the weights), the file's statement (``upload``/``metadata``),
    ``keys`` (unambiguous), else ``image_size``. Raises CoreInputError naming ``base.backbone`` or
    ``field`` when the choice does not fit the weights or the images."""
    candidates = info.backbone_candidates or (info.backbone,)
    if spec_backbone is not None:
        if spec_backbone not in candidates:
            raise CoreInputError(
                "base.backbone",
                f"the job expects {spec_backbone!r} but the checkpoint holds {' / '.join(candidates)}",
            )
        name, decided_by = spec_backbone, "spec"
    elif info.backbone_source != "image_size":
        name, decided_by = info.backbone, info.backbone_source
    else:
        name, decided_by = scan_variant_for(candidates, height, width), "image_size"
    check_input_size(
        name, height=height, width=width, field="base.backbone" if decided_by == "spec" else field
    )
    return name, decided_by
