"""Backbones, SCAN-layout clustering/embedding models, safe checkpoint loading and normalisation."""

from core.models.backbones import BACKBONE_NAMES, build_backbone, check_input_size, default_backbone_for
from core.models.checkpoints import (
    CheckpointInfo,
    choose_backbone,
    inspect_checkpoint,
    load_clustering_model,
    load_embedding_model,
    save_safetensors,
)
from core.models.heads import ClusteringModel, EmbeddingModel
from core.models.normalisation import Normalisation, image_statistics, resolve_normalisation
from core.models.statement import CheckpointStatement, parse_statement, read_statement, write_statement

__all__ = [
    "BACKBONE_NAMES",
    "CheckpointInfo",
    "CheckpointStatement",
    "ClusteringModel",
    "EmbeddingModel",
    "Normalisation",
    "build_backbone",
    "check_input_size",
    "choose_backbone",
    "default_backbone_for",
    "image_statistics",
    "inspect_checkpoint",
    "load_clustering_model",
    "load_embedding_model",
    "parse_statement",
    "read_statement",
    "resolve_normalisation",
    "save_safetensors",
    "write_statement",
]
