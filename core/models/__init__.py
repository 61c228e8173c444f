"""Backbones, SCAN-layout clustering/embedding models, and safe checkpoint loading."""

from core.models.backbones import BACKBONE_NAMES, build_backbone, default_backbone_for
from core.models.heads import ClusteringModel, EmbeddingModel

__all__ = [
    "BACKBONE_NAMES",
    "ClusteringModel",
    "EmbeddingModel",
    "build_backbone",
    "default_backbone_for",
]
