"""``model.onnx``: the refined ensemble as one ONNX graph taking the images a dataset holds.

Input ``images``: uint8 (N, H, W, C) with the job's H, W, C and any N. Outputs ``probabilities``:
float32 (N, K), the mean softmax of the networks, and ``assignments``: int64 (N,), its argmax. The
graph starts with ``core.models.inference.unit_pixels`` and each network's own normalisation, so an
ONNX runtime needs no preprocessing of its own. Exported in float32 whatever the run computed in.
A feature job's graph takes ``features``: float32 (N, D) instead (its MLPs standardise inside).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from core.atomic import atomic_write_bytes
from core.models.inference import unit_pixels

ONNX_NAME = "model.onnx"
INPUT_NAME = "images"
FEATURES_INPUT_NAME = "features"
OUTPUT_NAMES = ("probabilities", "assignments")
# Opset 17 is read by every onnxruntime since 1.11 (2022).
OPSET = 17


class EnsembleGraph(nn.Module):
    """uint8 (N, H, W, C) -> (probabilities (N, K) float32, assignments (N,) int64) of ``nets``."""

    def __init__(self, nets: tuple[nn.Module, ...] | list[nn.Module], *, pixels: bool = True) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.pixels = pixels  # False: the input is float features, passed as they are

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = unit_pixels(images) if self.pixels else images.float()
        probs = torch.stack([torch.softmax(net(x).float(), dim=1) for net in self.nets]).mean(0)
        return probs, probs.argmax(dim=1)


def export_onnx(
    nets: tuple[nn.Module, ...] | list[nn.Module],
    path: Path,
    *,
    image_shape: tuple[int, int, int] | None = None,
    feature_dim: int | None = None,
) -> None:
    """Write ``nets`` (CPU copies are exported; the originals are left as they are) to ``path``:
    networks on images of ``image_shape`` (H, W, C), or a feature job's on ``feature_dim`` features.

    Uses torch's TorchScript-based exporter, which every job can afford: on a 2-core CPU it exported
    a ResNet-18 pair in 3-6 s and the small CNN pair in 0.3 s (1.6 s with the first export's
    imports), where the torch.export-based exporter took 20-24 s and 3-13 s.
    """
    copies = [copy.deepcopy(net).float().cpu().eval() for net in nets]
    graph = EnsembleGraph(copies, pixels=feature_dim is None).eval()
    if feature_dim is not None:
        example, input_name = torch.zeros(2, feature_dim), FEATURES_INPUT_NAME
    else:
        assert image_shape is not None
        h, w, c = image_shape
        example, input_name = torch.zeros(2, h, w, c, dtype=torch.uint8), INPUT_NAME
    tmp = Path(path).with_name(Path(path).name + ".export")
    dynamic = {input_name: {0: "n"}, **{name: {0: "n"} for name in OUTPUT_NAMES}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice, once per process
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[input_name],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                opset_version=OPSET,
            )
        atomic_write_bytes(Path(path), tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
