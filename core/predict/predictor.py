"""``Predictor``: a job's refined ensemble assigning new images (or, for a feature job, new rows of
its feature space) exactly as the job assigned its own.

The job's final assignments are the mean of each network's prediction table, computed with the
run's arithmetic (memory format, autocast, inference chunks: ``core.ruc.perf``) on the device. A
``Predictor`` rebuilds the networks from ``refined_ensemble.safetensors``, places them as the run did
and calls the same ``predict_ensemble`` with the same chunks, so on the job's own images (same
device kind, same order) it returns the job's assignments. A feature job's MLP heads read float
(N, D) rows and compute as its RUC networks did (no channels_last; float32 on the CPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import CoreInputError
from core.models import ClusteringModel
from core.pipeline.artifacts import read_ensemble
from core.predict.inputs import IMAGES_FIELD, check_prediction_shape
from core.ruc.perf import INFERENCE_BATCH_FACTOR, nograd_chunk_size, place_network, resolve_perf
from core.ruc.trainer import predict_ensemble
from core.spec import JobSpec
from core.spec.refine import effective_batch_size


@dataclass(frozen=True)
class Predictor:
    """nets: the ensemble on ``device`` (eval mode); image_shape: (H, W, C) of the job's images
    (None for a feature job's, or an artifact written before it was recorded); feature_dim: D of a
    feature job's rows (None for an image job); the rest is the run's arithmetic."""

    nets: tuple[ClusteringModel, ...]
    device: torch.device
    image_shape: tuple[int, int, int] | None
    channels_last: bool
    autocast_dtype: torch.dtype | None
    chunk: int
    feature_dim: int | None = None

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
        features = meta.get("input") == "features"
        channels_last, autocast_dtype = resolve_perf(dev, spec, None, features=features)
        batch_size = int(meta["batch_size"]) if meta.get("batch_size", "").isdigit() else None
        batch_size = batch_size or effective_batch_size(spec.batch_size, num_samples=0)
        shape = json.loads(meta["image_shape"]) if "image_shape" in meta else image_shape
        if features:
            shape = None
        placed = tuple(place_network(net, dev, channels_last).eval() for net in nets)
        return cls(
            nets=placed,  # type: ignore[arg-type]
            device=dev,
            image_shape=(int(shape[0]), int(shape[1]), int(shape[2])) if shape else None,
            channels_last=channels_last,
            autocast_dtype=autocast_dtype,
            chunk=nograd_chunk_size(dev, batch_size),
            feature_dim=int(json.loads(meta["layout"])["in_dim"]) if features else None,
        )

    def check(self, images: torch.Tensor, *, max_images: int, field: str = IMAGES_FIELD) -> int:
        """The count of uint8 (N, H, W, C) ``images`` (a feature job: of float (N, D) rows); a
        CoreInputError naming ``field`` when they are not the job's kind (size, channels or D, dtype)
        or more than ``max_images``."""
        if self.feature_dim is not None:
            ok = images.is_floating_point() and images.ndim == 2 and images.shape[0] > 0
            if not ok or images.shape[1] != self.feature_dim or images.shape[0] > max_images:
                raise CoreInputError(
                    field,
                    f"must be 1 to {max_images} float rows (N, {self.feature_dim}), "
                    f"got {images.dtype} {tuple(images.shape)}",
                )
            return int(images.shape[0])
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
            raise CoreInputError(
                "images",
                f"must be a non-empty uint8 (N, H, W, C) array, got {images.dtype} {tuple(images.shape)}",
            )
        shape = (int(images.shape[0]), int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
        return check_prediction_shape(shape, expected=self.image_shape, max_images=max_images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Ensemble probabilities (N, K) float32 on the CPU for uint8 ``images`` (N, H, W, C), or a
        feature job's float (N, D) rows."""
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
