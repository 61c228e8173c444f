"""Backbones, SCAN-layout clustering/embedding models, and safe checkpoint loading."""

from core.models.backbones import BACKBONE_NAMES, build_backbone, default_backbone_for
from core.models.checkpoints import (
    CheckpointInfo,
    inspect_checkpoint,
    load_clustering_model,
    load_embedding_model,
    save_safetensors,
)
from core.models.heads import ClusteringModel, EmbeddingModel

__all__ = [
    "BACKBONE_NAMES",
    "CheckpointInfo",
    "ClusteringModel",
    "EmbeddingModel",
    "build_backbone",
    "default_backbone_for",
    "inspect_checkpoint",
    "load_clustering_model",
    "load_embedding_model",
    "save_safetensors",
]
