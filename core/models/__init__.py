"""Backbones, SCAN-layout clustering/embedding models, ViTs, safe checkpoint loading and normalisation."""

from core.models.backbones import (
    BACKBONE_NAMES,
    VIT,
    ModelBackbone,
    build_backbone,
    check_input_size,
    default_backbone_for,
    vit_config_of,
)
from core.models.checkpoints import (
    CheckpointInfo,
    choose_backbone,
    inspect_checkpoint,
    load_clustering_model,
    load_embedding_model,
    save_safetensors,
)
from core.models.feature_head import FEATURE_BACKBONE, FeatureClusteringModel, feature_statistics
from core.models.heads import ClusteringModel, EmbeddingModel
from core.models.normalisation import Normalisation, image_statistics, resolve_normalisation
from core.models.statement import CheckpointStatement, parse_statement, read_statement, write_statement
from core.models.vit import VisionTransformer, ViTConfig, input_plan

__all__ = [
    "BACKBONE_NAMES",
    "VIT",
    "CheckpointInfo",
    "CheckpointStatement",
    "ClusteringModel",
    "EmbeddingModel",
    "FEATURE_BACKBONE",
    "FeatureClusteringModel",
    "ModelBackbone",
    "Normalisation",
    "ViTConfig",
    "VisionTransformer",
    "build_backbone",
    "check_input_size",
    "choose_backbone",
    "default_backbone_for",
    "feature_statistics",
    "image_statistics",
    "input_plan",
    "inspect_checkpoint",
    "load_clustering_model",
    "load_embedding_model",
    "parse_statement",
    "read_statement",
    "resolve_normalisation",
    "save_safetensors",
    "vit_config_of",
    "write_statement",
]
