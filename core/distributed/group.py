"""Rank and world helpers and the few collectives RUC's data-parallel training needs.

Everything here reads torch.distributed's default process group; without one (or inside
``solo()``) the world has one rank and every helper is the identity, so single-process code
paths run exactly as they did before this package existed.
"""

from __future__ import annotations

import io
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_LOCAL = threading.local()


class RanksDiverged(RuntimeError):
    """Ranks that must hold identical state do not (a non-deterministic kernel, or a bug)."""


def world_size() -> int:
    """Ranks taking part in the current computation (1 without a process group or inside ``solo``)."""
    if getattr(_LOCAL, "solo", False) or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def rank() -> int:
    """This process's rank (0 without a process group); rank 0 is the one that writes files."""
    if world_size() == 1:
        return 0
    return dist.get_rank()


def is_leader() -> bool:
    return rank() == 0


@contextmanager
def solo() -> Iterator[None]:
    """Inside, every rank computes alone (world size 1, no collectives): replicated work."""
    before = getattr(_LOCAL, "solo", False)
    _LOCAL.solo = True
    try:
        yield
    finally:
        _LOCAL.solo = before


def shard_bounds(n: int, r: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that rank ``r`` (default: this rank) owns; sizes differ by at most 1."""
    w = world_size()
    r = rank() if r is None else r
    return n * r // w, n * (r + 1) // w


MIN_SHARD_ROWS = 2  # BatchNorm in train mode needs more than one sample per channel


def share(n: int) -> tuple[int, int, float]:
    """This rank's rows [lo, hi) of a training batch of ``n`` rows and the weight of its loss sums.

    Normally a contiguous 1/N of the rows with weight 1 (losses are sums over the rows divided by
    the batch's counts). A batch too small to give every rank MIN_SHARD_ROWS is computed whole by
    every rank with weight 1/N, so the summed gradient is still the batch's. (0, n, 1.0) at world 1.
    """
    w = world_size()
    if w == 1:
        return 0, n, 1.0
    if n < MIN_SHARD_ROWS * w:
        return 0, n, 1.0 / w
    lo, hi = shard_bounds(n)
    return lo, hi, 1.0


def comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU."""
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(fn: Callable[[int, int], torch.Tensor], n: int) -> torch.Tensor:
    """``fn(0, n)`` computed in pieces: each rank evaluates its rows [lo, hi), all gather the rest.

    ``fn(lo, hi)`` returns the (hi - lo, ...) rows of a row-wise function (inference in eval
    mode: a row does not depend on its batch-mates). Every rank returns the whole (n, ...) result
    on the device ``fn`` computes on. With fewer rows than ranks every rank computes all of them.
    """
    w = world_size()
    if w == 1 or n < w:
        return fn(0, n)
    lo, hi = shard_bounds(n)
    part = fn(lo, hi)
    size = -(-n // w)
    dev = comm_device()
    buf = torch.zeros((size, *part.shape[1:]), dtype=part.dtype, device=dev)
    buf[: hi - lo] = part.to(dev)
    pieces = [torch.empty_like(buf) for _ in range(w)]
    dist.all_gather(pieces, buf)
    rows = [pieces[r][: shard_bounds(n, r)[1] - shard_bounds(n, r)[0]] for r in range(w)]
    return torch.cat(rows).to(part.device)


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [b for b in (m.running_mean, m.running_var) if b is not None]
    return out


def reduce_step(module: nn.Module, extra: torch.Tensor) -> torch.Tensor:
    """Before an optimiser step: sum gradients and ``extra`` over ranks, average BatchNorm statistics.

    Each rank's loss is its rows' share of the batch's loss (sums over its rows divided by the
    whole batch's counts), so the summed gradient is the gradient of the whole batch. Running
    statistics are averaged every step, which keeps every rank's network identical (for the
    running mean this equals statistics over the whole batch; the running variance misses the
    between-shard part). ``extra`` (e.g. the step's loss terms) comes back summed; one
    all-reduce per dtype. Identity at world size 1.
    """
    w = world_size()
    if w == 1:
        return extra
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    stats = _bn_stats(module)
    groups: dict[torch.dtype, list[tuple[torch.Tensor, float]]] = {}
    for t, scale in [(g, 1.0) for g in grads] + [(s, 1.0 / w) for s in stats] + [(extra, 1.0)]:
        groups.setdefault(t.dtype, []).append((t, scale))
    dev = comm_device()
    for items in groups.values():
        flat = torch.cat([t.reshape(-1).to(dev) for t, _ in items])
        dist.all_reduce(flat)
        at = 0
        for t, scale in items:
            piece = flat[at : at + t.numel()].view_as(t)
            t.copy_(piece * scale if scale != 1.0 else piece)
            at += t.numel()
    return extra


def check_same(values: list[float], what: str) -> None:
    """Raise RanksDiverged when ``values`` (checksums of state every rank must share) differ."""
    w = world_size()
    if w == 1:
        return
    mine = torch.tensor(values, dtype=torch.float64, device=comm_device())
    every = [torch.empty_like(mine) for _ in range(w)]
    dist.all_gather(every, mine)
    for r, theirs in enumerate(every[1:], start=1):
        if not torch.equal(theirs, every[0]):
            raise RanksDiverged(
                f"rank {r} disagrees with rank 0 on {what}: {theirs.tolist()} vs {every[0].tolist()}"
            )


def _checksum(t: torch.Tensor) -> float:
    """A position-weighted float64 sum: equal for equal tensors, rarely for different ones."""
    flat = t.detach().reshape(-1).double()
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).remainder_(9973)
    return float((flat * (weights + 1)).sum())


def check_state(tensors: list[torch.Tensor], modules: list[nn.Module], what: str) -> None:
    """Raise RanksDiverged unless every rank holds the same ``tensors`` and module parameters.

    Costs one pass over the values and one small all-gather; nothing at world size 1.
    """
    if world_size() == 1:
        return
    with torch.no_grad():
        sums = [_checksum(t) for t in tensors]
        sums += [sum(_checksum(p) for p in m.parameters()) for m in modules]
    check_same(sums, what)


class _Pickler(pickle.Pickler):
    """Pickles a tree with every tensor taken out (sent by one collective broadcast instead)."""

    def __init__(self, file: io.BytesIO, tensors: list[torch.Tensor]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors = tensors

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            self.tensors.append(obj)
            meta = (
                tuple(obj.shape),
                obj.dtype,
                obj.device.type,
                isinstance(obj, nn.Parameter),
                obj.requires_grad,
            )
            return (len(self.tensors) - 1, meta)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tensors: list[torch.Tensor]) -> None:
        super().__init__(file)
        self.tensors = tensors

    def persistent_load(self, pid: Any) -> Any:
        index, (_shape, _dtype, _dev, is_param, requires_grad) = pid
        t = self.tensors[index]
        return nn.Parameter(t, requires_grad=requires_grad) if is_param else t.requires_grad_(requires_grad)


def broadcast_tree(obj: Any, *, device: torch.device | None = None) -> Any:
    """Rank 0's ``obj`` on every rank (identity at world size 1; others pass anything, e.g. None).

    Tensors (module parameters included) travel as one flat byte buffer by a collective
    broadcast, the rest as a pickle through ``broadcast_object_list``. Received tensors land on
    ``device`` (this rank's; the CPU when None) unless they were on the CPU at rank 0. Rank 0 is
    trusted: the process group is local to one job.
    """
    if world_size() == 1:
        return obj
    dev = comm_device()
    header: list[Any] = [None]
    tensors: list[torch.Tensor] = []
    if is_leader():
        f = io.BytesIO()
        _Pickler(f, tensors).dump(obj)
        metas = [(tuple(t.shape), t.dtype, t.device.type) for t in tensors]
        header = [(f.getvalue(), metas)]
    dist.broadcast_object_list(header, src=0, device=dev if dev.type == "cuda" else None)
    payload, metas = header[0]
    sizes = [int(torch.Size(s).numel()) * torch.empty((), dtype=d).element_size() for s, d, _ in metas]
    flat = torch.empty(sum(sizes), dtype=torch.uint8, device=dev)
    if is_leader() and tensors:
        flat.copy_(
            torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8).to(dev) for t in tensors])
        )
    if sum(sizes):
        dist.broadcast(flat, src=0)
    if is_leader():
        return obj
    received: list[torch.Tensor] = []
    at = 0
    for (shape, dtype, dev_type), size in zip(metas, sizes, strict=True):
        where = torch.device("cpu") if dev_type == "cpu" or device is None else device
        piece = flat[at : at + size].clone().view(dtype).reshape(shape).to(where)
        received.append(piece)
        at += size
    return _Unpickler(io.BytesIO(payload), received).load()
