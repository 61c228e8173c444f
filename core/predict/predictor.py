"""``Predictor``: a job's refined ensemble assigning new images exactly as the job assigned its own.

The job's final assignments are the mean of each network's prediction table, computed with the
run's arithmetic (memory format, autocast, inference chunks: ``core.ruc.perf``) on the device. A
``Predictor`` rebuilds the networks from ``refined_ensemble.safetensors``, places them as the run did
and calls the same ``predict_ensemble`` with the same chunks, so on the job's own images (same
device kind, same order) it returns the job's assignments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import CoreInputError
from core.models import ClusteringModel
from core.pipeline.artifacts import read_ensemble
from core.predict.inputs import check_prediction_shape
from core.ruc.perf import INFERENCE_BATCH_FACTOR, nograd_chunk_size, place_network, resolve_perf
from core.ruc.trainer import predict_ensemble
from core.spec import JobSpec
from core.spec.refine import effective_batch_size


@dataclass(frozen=True)
class Predictor:
    """nets: the ensemble on ``device`` (eval mode); image_shape: (H, W, C) of the job's images
    (None for an artifact written before it was recorded); the rest is the run's arithmetic."""

    nets: tuple[ClusteringModel, ...]
    device: torch.device
    image_shape: tuple[int, int, int] | None
    channels_last: bool
    autocast_dtype: torch.dtype | None
    chunk: int

    @property
    def num_clusters(self) -> int:
        return int(self.nets[0].num_clusters)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str | torch.device = "cpu",
        image_shape: tuple[int, int, int] | None = None,
    ) -> Predictor:
        """Rebuild the ensemble of ``path`` on ``device`` with the arithmetic its run used there.

        image_shape: the job's (H, W, C), for an artifact that predates recording it.
        """
        dev = torch.device(device)
        nets, meta = read_ensemble(Path(path), device="cpu")
        spec = JobSpec.model_validate_json(meta["spec"]).refine
        channels_last, autocast_dtype = resolve_perf(dev, spec, None)
        batch_size = int(meta["batch_size"]) if meta.get("batch_size", "").isdigit() else None
        batch_size = batch_size or effective_batch_size(spec.batch_size, num_samples=0)
        shape = json.loads(meta["image_shape"]) if "image_shape" in meta else image_shape
        placed = tuple(place_network(net, dev, channels_last).eval() for net in nets)
        return cls(
            nets=placed,  # type: ignore[arg-type]
            device=dev,
            image_shape=(int(shape[0]), int(shape[1]), int(shape[2])) if shape else None,
            channels_last=channels_last,
            autocast_dtype=autocast_dtype,
            chunk=nograd_chunk_size(dev, batch_size),
        )

    def check(self, images: torch.Tensor, *, max_images: int) -> int:
        """The count of uint8 (N, H, W, C) ``images``; CoreInputError naming ``images`` when they are
        not the job's kind (size, channels, dtype) or more than ``max_images``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
            raise CoreInputError(
                "images",
                f"must be a non-empty uint8 (N, H, W, C) array, got {images.dtype} {tuple(images.shape)}",
            )
        shape = (int(images.shape[0]), int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
        return check_prediction_shape(shape, expected=self.image_shape, max_images=max_images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Ensemble probabilities (N, K) float32 on the CPU for uint8 ``images`` (N, H, W, C)."""
        on_device = images.to(self.device)
        probs = predict_ensemble(
            self.nets,
            on_device,
            INFERENCE_BATCH_FACTOR * self.chunk,
            chunk=self.chunk,
            channels_last=self.channels_last,
            autocast_dtype=self.autocast_dtype,
        )
        return probs.float().cpu()
