"""How RUC's arithmetic runs (memory format, autocast, chunk sizes); results differ only by rounding."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from core.spec import RefineSpec

INFERENCE_BATCH_FACTOR = 4  # no-grad forwards keep no activations, so they afford 4x the batch size


@dataclass(frozen=True)
class PerfOptions:
    """None picks the device default.

    channels_last: NHWC memory format for networks and inputs (default: on CUDA only).
    autocast_dtype: dtype of autocast regions (default: bfloat16 on CUDA when the spec's
        mixed_precision is set, float32 everywhere on the CPU).
    fold_batchnorm: the label-guessing forwards of a training step (eval mode, no gradients) run
        on a copy of each network with BatchNorm folded into its convolutions
        (core.models.folding), equal up to rounding; the prediction tables and the ensemble
        never fold. Default: off (on an AVX2 EPYC, float32 channels_last, 200 images: 4.06 CPU s
        folded, the copy included, against 4.07 s; convolutions are 96% of the forward).
    """

    channels_last: bool | None = None
    autocast_dtype: torch.dtype | None = None
    fold_batchnorm: bool | None = None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products natively (AVX512-BF16 or AMX), Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_perf(device: torch.device, spec: RefineSpec) -> PerfOptions:
    """The arithmetic ``train_ruc`` uses unless told otherwise.

    CUDA: channels_last, bf16 autocast when ``spec.mixed_precision``. CPU: the same when the CPU
    has native bf16 (bench/ruc_epoch.py on a 2-core AMD EPYC with AVX512-BF16: channels_last +
    bf16 is the only variant near the compute target there), else float32 channels_last:
    emulated bf16 is slower than float32 (6x for a ResNet-18 forward on an AVX2 EPYC), and
    channels_last is the faster float32 layout on both EPYCs measured (RUC epoch 0.90x the CPU
    seconds of NCHW on the AVX2 one, floor 0.88x on the AVX512 one; README, Benchmarks).
    """
    if device.type == "cuda" or cpu_has_native_bf16():
        return PerfOptions(
            channels_last=True, autocast_dtype=torch.bfloat16 if spec.mixed_precision else None
        )
    return PerfOptions(channels_last=True, autocast_dtype=None)


def resolve_perf(
    device: torch.device, spec: RefineSpec, perf: PerfOptions | None, *, features: bool = False
) -> tuple[bool, torch.dtype | None]:
    """(channels_last, autocast dtype or None for float32) from ``perf`` over the device default.

    features: the networks are a feature job's MLP heads on (B, D) matrices, which have no channels.
    """
    perf = perf or PerfOptions()
    default = default_perf(device, spec)
    channels_last = perf.channels_last if perf.channels_last is not None else bool(default.channels_last)
    dtype = perf.autocast_dtype if perf.autocast_dtype is not None else default.autocast_dtype
    if features:
        channels_last = False
        if device.type == "cpu" and perf.autocast_dtype is None:
            # MLP heads are small matmuls: casting weights to bf16 at every call costs more than it
            # saves (CPU with native bf16, 200 x 768 -> 512 -> 10 forward + backward: 125 ms
            # bf16 vs 85 ms float32 of CPU time), so a feature job's CPU default is float32.
            dtype = None
    return channels_last, None if dtype == torch.float32 else dtype


def resolve_fold(perf: PerfOptions | None) -> bool:
    """Whether label guessing runs on BatchNorm-folded copies (PerfOptions.fold_batchnorm; off by
    default: no device measured a gain yet)."""
    return bool(perf is not None and perf.fold_batchnorm)


def place_network(net: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``net`` on ``device`` in the memory format its inputs will have (RUC's networks and the saved
    ensemble's, so both compute with the same kernels)."""
    return net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)


def nograd_chunk_size(device: torch.device, batch_size: int) -> int:
    """Images per forward without gradients inside a training step.

    Eval mode makes predictions independent of the batch, so chunking changes no result; on the
    CPU, chunks of B keep the transient activations of 400+ images from raising the peak memory
    at no cost in speed, while a GPU prefers larger launches.
    """
    return batch_size if device.type == "cpu" else INFERENCE_BATCH_FACTOR * batch_size
