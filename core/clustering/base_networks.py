"""The networks the base stage builds or loads, each with its backbone variant and normalisation
decided and reported.

Normalisation, highest first: ``base.normalisation``, the checkpoint upload's statement, the file's
own metadata, its layout's (ImageNet's for a ViT), the dataset's per-channel statistics (computed
once per job). A base network built on an embedding model copies that model's normalisation; RUC's
networks copy the base network's.
Each loader returns its model and a JSON-serialisable report for the base stage's info dict.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import CoreInputError
from core.models import (
    ClusteringModel,
    EmbeddingModel,
    Normalisation,
    ViTConfig,
    build_backbone,
    check_input_size,
    choose_backbone,
    default_backbone_for,
    image_statistics,
    input_plan,
    inspect_checkpoint,
    load_clustering_model,
    load_embedding_model,
    read_statement,
    resolve_normalisation,
)
from core.spec import JobSpec

if TYPE_CHECKING:
    from core.datasets import ImageDataset

__all__ = ["JobNormalisation", "load_clustering_checkpoint", "load_embedding_checkpoint", "new_base_model"]

EMBEDDING_FIELD = "base.embedding_checkpoint_id"
CLUSTERING_FIELD = "base.clustering_checkpoint_id"
# Fields of a loader's error that reach the client as they are; others are prefixed by the id field.
_OWN_FIELDS = ("base.backbone", "base.normalisation", "base.normalisation.mean", "base.normalisation.std")


@dataclass
class JobNormalisation:
    """Resolves the normalisation of each network of one job; the dataset's statistics are
    computed at most once (from the uint8 images, chunked)."""

    spec: JobSpec
    dataset: ImageDataset
    _stats: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, repr=False)

    def dataset_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._stats is None:
            self._stats = image_statistics(self.dataset.images, channels_last=True)
        return self._stats

    def resolve(
        self,
        *,
        upload: Any = None,
        metadata: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        layout: str | None = None,
    ) -> Normalisation:
        return resolve_normalisation(
            spec=self.spec.base.normalisation,
            upload=upload,
            metadata=metadata,
            layout=layout,
            channels=self.dataset.channels,
            dataset_stats=self.dataset_stats,
        )


def _checkpoint_path(checkpoint_paths: dict[str, Path], ckpt_id: str, field_name: str) -> Path:
    path = checkpoint_paths.get(ckpt_id)
    if path is None:
        raise CoreInputError(field_name, f"checkpoint {ckpt_id!r} is not available to this job")
    return Path(path)


def _check_channels(info_channels: int, channels: int, field_name: str) -> None:
    if info_channels != channels:
        raise CoreInputError(
            field_name, f"the model takes {info_channels}-channel images but the dataset has {channels}"
        )


def _as_field(err: CoreInputError, field_name: str, mapped: dict[str, str]) -> CoreInputError:
    """A loader's error under the spec field the client can change."""
    if err.field in mapped:
        return CoreInputError(mapped[err.field], err.problem)
    if err.field == field_name or err.field in _OWN_FIELDS:
        return err
    return CoreInputError(field_name, f"{err.field}: {err.problem}")


def _decide(
    path: Path, spec: JobSpec, dataset: ImageDataset, norm: JobNormalisation, field_name: str
) -> tuple[str, Normalisation, dict[str, Any]]:
    """Backbone, normalisation and the report for one uploaded file."""
    statement = read_statement(path)
    info = inspect_checkpoint(path, statement=statement)
    _check_channels(info.in_channels, dataset.channels, field_name)
    backbone, decided_by = choose_backbone(
        info,
        spec_backbone=spec.base.backbone,
        height=dataset.height,
        width=dataset.width,
        field=field_name,
    )
    metadata = (info.mean, info.std) if info.mean is not None and info.std is not None else None
    normalisation = norm.resolve(
        upload=statement.normalisation, metadata=metadata, layout=info.layout_normalisation
    )
    report: dict[str, Any] = {
        "backbone": backbone,
        "backbone_decided_by": decided_by,
        "backbone_candidates": list(info.backbone_candidates),
        "normalisation": normalisation.as_dict(),
    }
    if info.vit is not None:
        # The architecture, and what it does with this dataset's images (resize, grid, pos-embed).
        plan = input_plan(ViTConfig.from_dict(info.vit), dataset.height, dataset.width)
        report["vit"] = {**info.vit, "job": plan}
        report["keys"] = info.keys
    return backbone, normalisation, report


def load_embedding_checkpoint(
    spec: JobSpec, checkpoint_paths: dict[str, Path], dataset: ImageDataset, norm: JobNormalisation
) -> tuple[EmbeddingModel, dict[str, Any]] | None:
    """The uploaded embedding model (``base.embedding_checkpoint_id``) and its report, or None."""
    ckpt_id = spec.base.embedding_checkpoint_id
    if ckpt_id is None:
        return None
    try:
        path = _checkpoint_path(checkpoint_paths, ckpt_id, EMBEDDING_FIELD)
        backbone, normalisation, report = _decide(path, spec, dataset, norm, EMBEDDING_FIELD)
        model = load_embedding_model(path, backbone=backbone, mean=normalisation.mean, std=normalisation.std)
    except CoreInputError as e:
        raise _as_field(e, EMBEDDING_FIELD, {}) from e
    return model, report


def load_clustering_checkpoint(
    spec: JobSpec,
    checkpoint_paths: dict[str, Path],
    dataset: ImageDataset,
    norm: JobNormalisation,
    *,
    num_clusters: int,
) -> tuple[ClusteringModel, dict[str, Any]]:
    """The uploaded SCAN-layout clustering model (``base.clustering_checkpoint_id``), head
    ``base.head`` or the file's, and its report."""
    ckpt_id = spec.base.clustering_checkpoint_id
    assert ckpt_id is not None  # BaseSpec's validator
    try:
        path = _checkpoint_path(checkpoint_paths, ckpt_id, CLUSTERING_FIELD)
        backbone, normalisation, report = _decide(path, spec, dataset, norm, CLUSTERING_FIELD)
        model = load_clustering_model(
            path,
            num_clusters=num_clusters,
            head=spec.base.head,
            backbone=backbone,
            mean=normalisation.mean,
            std=normalisation.std,
        )
    except CoreInputError as e:
        raise _as_field(e, CLUSTERING_FIELD, {"head": "base.head", "num_clusters": "num_clusters"}) from e
    return model, report


def new_base_model(
    spec: JobSpec,
    k: int,
    emb_model: EmbeddingModel | None,
    dataset: ImageDataset,
    norm: JobNormalisation,
    emb_normalisation: dict[str, Any] | None,
) -> tuple[ClusteringModel, dict[str, Any]]:
    """Fresh ClusteringModel with K outputs and its report: the embedding model's backbone (copied,
    with its normalisation ``emb_normalisation``) when there is one, else a new backbone of
    ``base.backbone`` or the default for the image size."""
    if emb_model is not None:
        model = ClusteringModel(
            copy.deepcopy(emb_model.backbone),
            emb_model.backbone_dim,
            k,
            mean=emb_model.mean.flatten().tolist(),
            std=emb_model.std.flatten().tolist(),
        )
        return model, {"normalisation": emb_normalisation}
    name = spec.base.backbone or default_backbone_for(dataset.height, dataset.width)
    check_input_size(name, height=dataset.height, width=dataset.width, field="base.backbone")
    bb, dim = build_backbone(name, in_channels=dataset.channels)
    normalisation = norm.resolve()
    model = ClusteringModel(bb, dim, k, mean=list(normalisation.mean), std=list(normalisation.std))
    return model, {"normalisation": normalisation.as_dict()}
