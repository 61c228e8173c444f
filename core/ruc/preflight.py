"""Memory preflight of the RUC stage: a dry run measures the peak, the batch shrinks until it fits.

Before the first RUC epoch, ``preflight`` runs DRY_RUN_STEPS real training steps of network 1
(``step.train_step``: views, targets, chunked forward/backward, SGD) with both networks and their
optimisers built as ``train_ruc`` builds them, then the end of a pass (one no-grad prediction batch
of the table refresh) and the epoch checkpoint's CPU copies (``Runtime.snapshot``), on the job's
device, at the job's precision, and measures the peak:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, so the peak counts
  everything this process holds on the device (the data set, the base network, its output) plus
  what the dry run allocates;
* CPU: the process's peak resident set over the dry run (``core.memory.host.HostPeak``): the same
  resident data plus the interpreter and torch.

Added to it: what the dry run cannot allocate, the networks of a job's earlier refinement runs
(``repeats``), which stay alive for evaluation: ``(runs - 1) x`` the bytes of the dry run's
networks. The kNN buffers of the clean-set strategy are not added: the sampling stage before has
already allocated and freed them.

The limit (``device_limit``): on CUDA the device memory this process can get (free plus what its
allocator already holds), capped by the caller's number when it is positive; on the CPU the
caller's number (``Settings.device_memory_bytes``, else ``worker_memory_bytes``); 0 on the CPU means
no limit (the preflight then only measures). When the peak exceeds the limit (or CUDA runs out of
memory in the dry run) the next of ``core.memory.shrink_candidates`` is tried: B, B/2, B/4 ... down
to ``shrink_floor(B) = max(16, B/8)``; when even the floor does not fit, ``InsufficientMemory``
names ``refine.batch_size``, or, when what the process held before the dry run (the data set, the
base network, the runtime) alone exceeds the limit, the estimate's largest term that does not scale
with the batch (``dataset_id``, ``refine.strategy``, ``refine.backbone``).

The dry run works on its own copies of the networks, its own generators and under
``torch.random.fork_rng``, so the job's results are those of a job without a preflight at the
chosen batch size.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from core.distributed import solo
from core.errors import InsufficientMemory
from core.memory import GiB, MemoryEstimate, shrink_candidates, shrink_floor
from core.memory.host import HostPeak
from core.models import ClusteringModel
from core.models.inference import predict_softmax
from core.ruc.perf import INFERENCE_BATCH_FACTOR, PerfOptions
from core.ruc.schedules import resolve_schedule
from core.ruc.step import PassSettings, train_step
from core.ruc.trainer import _build_runtime
from core.spec import RefineSpec

DRY_RUN_STEPS = 2  # the first allocates lazily built buffers (optimizer, kernels' workspaces)
Estimate = Callable[[int], MemoryEstimate | None]  # batch size -> the estimate at that batch


@dataclass(frozen=True)
class PreflightReport:
    """What the preflight measured and chose (``result["preflight"]``, core.result_schema.Preflight)."""

    device: str
    limit_bytes: int | None
    estimated_peak_bytes: int | None
    measured_peak_bytes: int
    requested_batch_size: int
    batch_size: int
    shrunk: bool
    reason: str
    tried: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_limit(device: torch.device, cap: int) -> int | None:
    """Bytes the job may use on ``device`` (module docstring); None: no limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        available = int(free + torch.cuda.memory_reserved(device))
        return min(available, cap) if cap > 0 else available
    return cap if cap > 0 else None


def _dry_run(
    base_model: ClusteringModel,
    images: torch.Tensor,
    pseudo: torch.Tensor,
    clean: torch.Tensor,
    spec: RefineSpec,
    *,
    num_clusters: int,
    seed: int,
    perf: PerfOptions | None,
) -> int:
    """DRY_RUN_STEPS steps of network 1 at ``spec.batch_size``; returns the bytes of the networks."""
    sched = resolve_schedule(spec, num_clusters=num_clusters, num_samples=images.shape[0])
    spec = spec.model_copy(update={"label_smoothing": sched.label_smoothing})
    rt = _build_runtime(
        base_model,
        images,
        clean.clone(),
        pseudo.clone(),
        spec,
        num_clusters=num_clusters,
        seed=seed,
        perf=perf,
    )
    ps = PassSettings(num_clusters, sched.label_smoothing, sched.lambda_u_at(0), epoch=1)
    dev, bsz = images.device, spec.batch_size
    clean_idx = rt.clean.nonzero().squeeze(1)
    unclean_idx = (~rt.clean).nonzero().squeeze(1)
    for _ in range(DRY_RUN_STEPS):
        xb = clean_idx[torch.randint(clean_idx.numel(), (bsz,), generator=rt.generator).to(dev)]
        ub = None
        if unclean_idx.numel():
            ub = unclean_idx[torch.randint(unclean_idx.numel(), (bsz,), generator=rt.generator).to(dev)]
        train_step(0, rt, images, xb, ub, spec, ps)
    chunk = INFERENCE_BATCH_FACTOR * rt.nograd_chunk
    predict_softmax(
        rt.nets[0],
        images[:chunk],
        batch_size=chunk,
        chunk=rt.nograd_chunk,
        channels_last=rt.channels_last,
        autocast_dtype=rt.autocast_dtype,
    )
    snapshot = rt.snapshot("preflight", 0, [])
    del snapshot
    return sum(p.numel() * p.element_size() for net in rt.nets for p in net.parameters())


@dataclass(frozen=True)
class DryRun:
    """One dry run's figures, bytes: ``peak`` (None: out of memory) and ``resident``, what the process
    held on the device when it started (the data, the base network, on the CPU the runtime)."""

    peak: int | None
    resident: int


def measure_peak(
    base_model: ClusteringModel,
    images: torch.Tensor,
    pseudo: torch.Tensor,
    clean: torch.Tensor,
    spec: RefineSpec,
    *,
    batch_size: int,
    num_clusters: int,
    seed: int,
    runs: int = 1,
    perf: PerfOptions | None = None,
) -> DryRun:
    """Peak bytes of the RUC stage at ``batch_size`` (module docstring)."""
    dev = images.device
    cuda = dev.type == "cuda"
    spec = spec.model_copy(update={"batch_size": batch_size})
    host = HostPeak()
    resident = 0
    try:
        with torch.random.fork_rng(devices=[dev] if cuda else []):
            if cuda:
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                resident = torch.cuda.memory_allocated(dev)
            with contextlib.nullcontext() if cuda else host:
                resident = resident or host.peak  # the RSS on entry, after freed pages went back
                with solo():  # rank 0 alone, at the whole batch: an upper bound of any rank's share
                    net_bytes = _dry_run(
                        base_model,
                        images,
                        pseudo,
                        clean,
                        spec,
                        num_clusters=num_clusters,
                        seed=seed,
                        perf=perf,
                    )
            if cuda:
                torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) if cuda else host.peak
    except torch.OutOfMemoryError:
        return DryRun(peak=None, resident=resident)
    finally:
        gc.collect()  # the dry run's networks and views go before the job allocates its own
        if cuda:
            torch.cuda.empty_cache()
    return DryRun(peak=int(peak) + (runs - 1) * net_bytes, resident=resident)


def _gib(n: int | None) -> str:
    return "out of memory" if n is None else f"{n / GiB:.2f} GiB"


def _refusal(
    dev: torch.device, limit: int, requested: int, floor: int, run: DryRun, est: MemoryEstimate | None
) -> InsufficientMemory:
    """The error when even the floor does not fit: which field to change, and why.

    refine.batch_size, unless what the process held before the dry run (the data set, the base
    network, the runtime) alone exceeds the limit: then no RUC setting helps, and the field is the
    estimate's largest term that does not scale with the batch (usually dataset_id).
    """
    head = (
        f"memory preflight: the job does not fit the {dev.type} memory limit of {_gib(limit)} even at "
        f"refine.batch_size {floor} (the least it shrinks {requested} to): the dry run's peak was "
        f"{_gib(run.peak)}, {_gib(run.resident)} of it held before RUC started"
    )
    if run.resident > limit:
        name = est.largest_fixed_field() if est is not None else "dataset_id"
        return InsufficientMemory(f"{head}; that alone exceeds the limit: change {name}", field=name)
    advice = "lower refine.batch_size below {floor} (or choose a smaller refine.backbone)"
    return InsufficientMemory(f"{head}; {advice.format(floor=floor)}", field="refine.batch_size")


def preflight(
    base_model: ClusteringModel,
    images: torch.Tensor,
    pseudo: torch.Tensor,
    clean: torch.Tensor,
    spec: RefineSpec,
    *,
    num_clusters: int,
    seed: int,
    limit_bytes: int | None,
    estimate: Estimate,
    runs: int = 1,
    perf: PerfOptions | None = None,
) -> PreflightReport:
    """The batch size the RUC stage trains with and what was measured (module docstring).

    images: (N, H, W, C) uint8 or (N, D) features on the job's device; pseudo (N,) int64 and
    clean (N,) bool as ``train_ruc`` takes them. limit_bytes: ``device_limit``'s answer (None: no
    limit, the requested batch is measured and kept). Raises InsufficientMemory when even
    ``shrink_floor`` of the requested batch does not fit.
    """
    dev = images.device
    requested = resolve_schedule(spec, num_clusters=num_clusters, num_samples=images.shape[0]).batch_size
    candidates = shrink_candidates(requested) if limit_bytes is not None else [requested]
    tried: list[dict[str, Any]] = []
    for b in candidates:
        run = measure_peak(
            base_model,
            images,
            pseudo,
            clean,
            spec,
            batch_size=b,
            num_clusters=num_clusters,
            seed=seed,
            runs=runs,
            perf=perf,
        )
        peak, est = run.peak, estimate(b)
        tried.append(
            {
                "batch_size": b,
                "measured_peak_bytes": peak,
                "resident_bytes": run.resident,
                "estimated_peak_bytes": est.total if est else None,
            }
        )
        if peak is not None and (limit_bytes is None or peak <= limit_bytes):
            first = tried[0]["measured_peak_bytes"]
            shrunk = b != requested
            reason = (
                f"refine.batch_size {requested} -> {b}: the dry run's peak at {requested} was {_gib(first)}, "
                f"over the {dev.type} limit of {_gib(limit_bytes)}; at {b} it is {_gib(peak)}"
                if shrunk
                else f"batch size {b} fits: the dry run's peak is {_gib(peak)}"
                + (f" of the {dev.type} limit of {_gib(limit_bytes)}" if limit_bytes is not None else "")
            )
            return PreflightReport(
                device=str(dev),
                limit_bytes=limit_bytes,
                estimated_peak_bytes=est.total if est else None,
                measured_peak_bytes=peak,
                requested_batch_size=requested,
                batch_size=b,
                shrunk=shrunk,
                reason=reason,
                tried=tried,
            )
    assert limit_bytes is not None  # without a limit the first candidate is always taken
    raise _refusal(dev, limit_bytes, requested, shrink_floor(requested), run, est)
