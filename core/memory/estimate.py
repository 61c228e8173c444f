"""Worker memory of a job, estimated from the dataset's facts and the spec, without torch.

One definition for two users: the API's submit check (``api/services/jobs.py``: a job that cannot
fit even at the smallest batch the preflight may shrink to, ``shrink_floor``, is a 422 naming the
field to change) and the worker's memory preflight (``core/ruc/preflight.py``), which reports this
estimate beside the peak it measures in a dry run. The estimate covers the RUC stage
(``core/ruc/trainer.py``), the largest, and is a sum of these terms, in bytes (N images of H x W x C,
batch B = ``refine.batch_size``, k = ``refine.knn_k``, M = ``refine.weak_augmentations``, P the
backbone's parameters, D its feature width):

- images: ``N*H*W*C`` (the uint8 tensor) ``+ 4*N*H*W*C`` (one float32 copy of the whole set);
- kNN (strategy ``metric`` or ``hybrid``): ``8*N*k`` (indices) ``+ 4*min(4096, N)*N`` (the
  similarity block of ``core.sampling.knn_indices``) ``+ 4*N*D`` (embeddings);
- models: ``4*P*3`` per trained network (weights, gradients, momentum), two with
  ``refine.co_training``, plus ``4*P`` for the base network;
- activations: ``B * H*W * a`` with ``a`` the bytes autograd keeps per input pixel for one image
  (``ACTIVATION_BYTES_PER_PIXEL``), one chunk of B at a time as the trainer runs it; for a ViT
  checkpoint ``B * vit_activation_bytes`` (per token and block, see there), its P the checkpoint's
  parameter count and D its width (the upload's ``vit`` facts);
- batch inputs: ``2 * (2*M + 1) * B * 4*H*W*C`` (weak views, strong view, the mixed copy);
- a fixed ``RUNTIME_OVERHEAD_BYTES`` for the interpreter, torch and its allocator.

A feature job (``core.spec.resolve_inputs``: MLP heads on a feature space of dimension D, hidden
width h = ``refine.feature_hidden_dim``) reads no pixels, so its terms are instead:

- features: ``4*N*sum(D)`` (every float32 feature array of the dataset is loaded) plus ``N*H*W*C``
  when the dataset also has images (held as uint8, never converted);
- kNN: as above without the embedding copy (the features are the embedding);
- models: ``P = D*h + 3*h + h*K + K`` parameters (Linear, BatchNorm, head), counted as above;
- activations: ``B * 4 * (D + 4*h)`` per chunk of B (input, pre-activation, BatchNorm, ReLU);
- batch inputs: ``2 * (2*M + 1) * B * 4*D``.

The submit check compares the total at ``shrink_floor(B)`` with ``Settings.worker_memory_bytes``; the
largest term decides which field the 422 names; BATCH_TERMS are the two terms that scale with B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import CoreInputError
from core.spec import JobSpec, resolve_from_facts
from core.spec.refine import effective_batch_size, effective_knn_k

GiB = 1024**3
RUNTIME_OVERHEAD_BYTES = 1 * GiB
KNN_CHUNK_ROWS = 4096  # core.sampling.knn_indices' default chunk_size
# fp32 bytes autograd saves per input pixel per image in a training-mode forward (3-channel input),
# the weights it also saves subtracted; measured with torch.autograd.graph.saved_tensors_hooks on
# core.models.build_backbone at 8-224 px and rounded up (linear in the pixel count within 2 %).
ACTIVATION_BYTES_PER_PIXEL: dict[str, int] = {
    "small_cnn": 640,
    "resnet18_cifar": 4700,
    "resnet18": 460,
    "resnet34": 660,
    "resnet50": 1760,
}
# Parameters (3 input channels) and feature width D of each backbone; tests/api checks both against
# core.models.build_backbone.
BACKBONE_PARAMETERS: dict[str, int] = {
    "small_cnn": 93_472,
    "resnet18_cifar": 11_168_832,
    "resnet18": 11_176_512,
    "resnet34": 21_284_672,
    "resnet50": 23_508_032,
}
BACKBONE_FEATURE_DIM: dict[str, int] = {
    "small_cnn": 128,
    "resnet18_cifar": 512,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
}
# ViT (core.models.vit): fp32 values autograd saves per token and block, in units of the width D and
# the MLP width M; measured like ACTIVATION_BYTES_PER_PIXEL (17-789 tokens, D 128-384, M 2-4 D):
# 8.3-8.6 D + 2 M, 2 D more with LayerScale. Linear in the tokens: scaled_dot_product_attention's
# fused kernels keep no tokens x tokens matrix.
VIT_SAVED_PER_TOKEN_D = 9
VIT_SAVED_PER_TOKEN_M = 2
VIT_LAYER_SCALE_PER_TOKEN_D = 2
_VIT_FIELDS = ("patch_size", "dim", "depth", "mlp_dim", "registers", "in_channels", "parameters")
# The field a client changes to shrink each term.
TERM_FIELDS: dict[str, str] = {
    "images": "dataset_id",
    "features": "base.features",
    "knn": "refine.strategy",
    "models": "refine.backbone",
    "activations": "refine.batch_size",
    "batch_inputs": "refine.batch_size",
}


# The memory preflight halves refine.batch_size while a dry run does not fit, down to this floor:
# never below SHRINK_MIN_BATCH (BatchNorm over fewer samples gets noisy) nor 1/SHRINK_MAX_FACTOR of
# the requested B (three halvings: the run's steps per epoch grow 8x at most).
SHRINK_MIN_BATCH = 16
SHRINK_MAX_FACTOR = 8
BATCH_TERMS = ("activations", "batch_inputs")


def shrink_floor(batch_size: int) -> int:
    """The smallest batch the preflight may shrink ``batch_size`` to (the requested one when <= 16)."""
    return min(batch_size, max(SHRINK_MIN_BATCH, math.ceil(batch_size / SHRINK_MAX_FACTOR)))


def shrink_candidates(batch_size: int) -> list[int]:
    """The batches the preflight tries, largest first: B, B/2, B/4 ... above the floor, then the floor."""
    floor = shrink_floor(batch_size)
    out = [batch_size]
    while out[-1] // 2 > floor:
        out.append(out[-1] // 2)
    return out if out[-1] == floor else [*out, floor]


def default_backbone(height: int, width: int) -> str:
    """The size rule of ``core.models.default_backbone_for`` (which needs torch to import)."""
    side = max(height, width)
    if side <= 16:
        return "small_cnn"
    if side <= 64:
        return "resnet18_cifar"
    return "resnet18"


def vit_tokens(vit: dict[str, Any], height: int, width: int) -> tuple[int, int, int]:
    """(tokens, input height, input width) of a ViT on (height, width) images: sides resized to the
    nearest multiple of the patch (``core.models.vit.input_plan``, which needs torch to import)."""
    p = int(vit["patch_size"])
    h, w = (max(p, math.floor(side / p + 0.5) * p) for side in (height, width))
    return 1 + int(vit["registers"]) + (h // p) * (w // p), h, w


def vit_activation_bytes(vit: dict[str, Any], height: int, width: int) -> int:
    """fp32 bytes a training forward of the ViT saves for one (height, width) image."""
    tokens, h, w = vit_tokens(vit, height, width)
    d = int(vit["dim"])
    per_token = VIT_SAVED_PER_TOKEN_D * d + VIT_SAVED_PER_TOKEN_M * int(vit["mlp_dim"])
    if vit.get("layer_scale"):
        per_token += VIT_LAYER_SCALE_PER_TOKEN_D * d
    return 4 * (tokens * int(vit["depth"]) * per_token + int(vit["in_channels"]) * h * w)


def _usable_vit(vit: Any) -> dict[str, Any] | None:
    """A checkpoint's ``vit`` facts when every number the estimate reads is a positive int."""
    if not isinstance(vit, dict):
        return None
    ok = all(isinstance(vit.get(k), int) and vit[k] >= 0 for k in _VIT_FIELDS) and vit["patch_size"] > 0
    return vit if ok else None


@dataclass(frozen=True)
class MemoryEstimate:
    terms: dict[str, int]  # bytes per term, RUNTIME_OVERHEAD_BYTES under "runtime"
    backbone: str
    batch_size: int = 0  # the B the batch terms were computed at

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def largest_fixed_field(self) -> str:
        """The field of the largest term that does not scale with the batch (what a smaller batch
        cannot fix)."""
        fixed = [t for t in self.terms if t in TERM_FIELDS and t not in BATCH_TERMS]
        return TERM_FIELDS[max(fixed, key=lambda t: self.terms[t])]

    def largest_field(self) -> str:
        """The spec field whose term is largest (the runtime overhead is nobody's to change)."""
        name = max((t for t in self.terms if t in TERM_FIELDS), key=lambda t: self.terms[t])
        return TERM_FIELDS[name]

    def describe(self) -> str:
        parts = ", ".join(f"{name} {n / GiB:.1f} GiB" for name, n in self.terms.items())
        return f"{self.total / GiB:.1f} GiB ({parts}; backbone {self.backbone})"


def estimate_job_memory(
    spec: JobSpec,
    facts: dict[str, Any],
    *,
    checkpoint_backbone: str | None = None,
    checkpoint_vit: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> MemoryEstimate | None:
    """Bytes the job's RUC stage needs on a worker; None when the facts lack the data's shape.

    batch_size: B to estimate at instead of the spec's (effective) ``refine.batch_size``.
    facts: the dataset's validation facts (``count``, ``height``, ``width``, ``channels``,
    ``feature_spaces``).
    checkpoint_backbone / checkpoint_vit: an uploaded checkpoint's ``backbone`` and, for ``vit``,
    its ``vit`` facts (the architecture).
    """
    spaces = facts.get("feature_spaces") or {}
    try:
        resolved = resolve_from_facts(spec, facts)
    except CoreInputError:
        return None  # the submit is refused for that reason before memory matters
    if resolved.kind == "features":
        return _feature_job_memory(spec, facts, spaces, resolved.dim or 0, batch_size)
    shape = [facts.get(k) for k in ("count", "height", "width", "channels")]
    if not all(isinstance(v, int) and v > 0 for v in shape):
        return None
    n, h, w, c = (int(v) for v in shape)  # type: ignore[arg-type]
    refine = spec.refine
    backbone = refine.backbone or spec.base.backbone or checkpoint_backbone or default_backbone(h, w)
    vit = _usable_vit(checkpoint_vit) if backbone == "vit" else None
    if backbone not in BACKBONE_PARAMETERS and vit is None:
        backbone = default_backbone(h, w)
    pixels = h * w
    if vit is not None:
        params, dim, per_image = int(vit["parameters"]), int(vit["dim"]), vit_activation_bytes(vit, h, w)
    else:
        params, dim = BACKBONE_PARAMETERS[backbone], BACKBONE_FEATURE_DIM[backbone]
        per_image = pixels * ACTIVATION_BYTES_PER_PIXEL[backbone]
    b = _batch(refine.batch_size, batch_size, n)
    nets = 2 if refine.co_training else 1
    knn = _knn_bytes(spec, n)
    knn += 4 * n * dim if knn and resolved.space is None else 0
    terms = {
        "images": 5 * n * pixels * c,
        "knn": knn,
        "models": 4 * params * 3 * nets + 4 * params,
        "activations": b * per_image,
        "batch_inputs": 2 * (2 * refine.weak_augmentations + 1) * b * 4 * pixels * c,
        "runtime": RUNTIME_OVERHEAD_BYTES,
    }
    dims = [v for v in spaces.values() if isinstance(v, int) and v > 0]
    if dims:  # the dataset's feature arrays are loaded with its images
        terms["features"] = 4 * n * sum(dims)
    return MemoryEstimate(terms=terms, backbone=backbone, batch_size=b)


def estimate_at_shrink_floor(
    spec: JobSpec,
    facts: dict[str, Any],
    *,
    checkpoint_backbone: str | None = None,
    checkpoint_vit: dict[str, Any] | None = None,
) -> MemoryEstimate | None:
    """The estimate at ``shrink_floor`` of the job's batch: the least the job can need once the
    preflight has shrunk its batch, which is what the submit check compares with the worker."""
    n = facts.get("count")
    if not isinstance(n, int) or n <= 0:
        return None
    floor = shrink_floor(effective_batch_size(spec.refine.batch_size, num_samples=n))
    return estimate_job_memory(
        spec, facts, checkpoint_backbone=checkpoint_backbone, checkpoint_vit=checkpoint_vit, batch_size=floor
    )


def _batch(spec_batch: int | None, override: int | None, n: int) -> int:
    return min(override if override is not None else effective_batch_size(spec_batch, num_samples=n), n)


def _knn_bytes(spec: JobSpec, n: int) -> int:
    """kNN indices and the similarity block of the metric strategy (0 for confidence)."""
    if spec.refine.strategy == "confidence":
        return 0
    clusters = spec.num_clusters or (spec.base.auto_k.k_min if spec.base.auto_k else 2)
    k = effective_knn_k(spec.refine.knn_k, num_samples=max(n, 2), num_clusters=clusters)
    return 8 * n * k + 4 * min(KNN_CHUNK_ROWS, n) * n


def _feature_job_memory(
    spec: JobSpec, facts: dict[str, Any], spaces: dict[str, Any], d: int, batch_size: int | None
) -> MemoryEstimate | None:
    """The terms of a feature job (module docstring)."""
    n = facts.get("count")
    dims = [v for v in spaces.values() if isinstance(v, int) and v > 0]
    if not (isinstance(n, int) and n > 0 and d > 0 and dims):
        return None
    refine = spec.refine
    h = refine.feature_hidden_dim
    k = spec.num_clusters or (spec.base.auto_k.k_max if spec.base.auto_k else 2)
    params = d * h + 3 * h + h * k + k
    b = _batch(refine.batch_size, batch_size, n)
    nets = 2 if refine.co_training else 1
    image_shape = [facts.get(key) for key in ("height", "width", "channels")]
    image_bytes = math.prod(image_shape) * n if all(isinstance(v, int) and v > 0 for v in image_shape) else 0
    terms = {
        "features": 4 * n * sum(dims) + image_bytes,
        "knn": _knn_bytes(spec, n),
        "models": 4 * params * 3 * nets + 4 * params,
        "activations": b * 4 * (d + 4 * h),
        "batch_inputs": 2 * (2 * refine.weak_augmentations + 1) * b * 4 * d,
        "runtime": RUNTIME_OVERHEAD_BYTES,
    }
    return MemoryEstimate(terms=terms, backbone="mlp", batch_size=b)
