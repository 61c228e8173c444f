"""One job on several devices: data-parallel training with torch.distributed (pure PyTorch).

Shape. Rank 0 is the process that runs ``core.pipeline.run_job`` (the Celery task, so hooks,
progress, events and cancellation work as on one device); ranks 1..N-1 are child processes
(``launch.launched``) that run no pipeline: they wait for rank 0 to announce an entry point
marked ``@collective`` (``commands``) -- the base network fit and each RUC run -- receive its
arguments (data, model, labels, resume state) from rank 0 and train alongside. Only rank 0 writes
checkpoints, artifacts and results. gloo on CPUs (``cpu:N``, for tests), NCCL on GPUs.

Training. Every global decision is computed identically on every rank: the shared generators
(batches, augmentations, MixMatch permutations, Beta draws) advance identically, so each rank
builds the same views of the whole batch, and the clean set, refurbishing, schedules and
prediction tables are the same everywhere (``group.check_same`` verifies it after every epoch).
What is split is the expensive part: each rank forwards and backpropagates its share of every
training chunk (B / N rows, ``group.share``), its losses are its share of the batch's sums, and
gradients are summed across ranks before each optimiser step (``group.reduce_step``); the
no-gradient forwards (label guessing, whole-dataset prediction tables) are split by rows and
all-gathered (``group.gather_rows``).

Why an explicit all-reduce and not DistributedDataParallel: a RUC step runs several forwards of
the network being trained (the strong clean view, then the mixed batch in chunks, gradients
accumulated) interleaved with no-gradient eval-mode forwards of it and of its partner; DDP's
reducer expects one forward per backward, would broadcast buffers at every forward, and would
need ``no_sync`` around all but the last chunk. One flat all-reduce per step of the summed
gradients (plus the BatchNorm statistics and the step's loss terms) is simpler and exact. It
does not overlap communication with the backward pass as DDP's buckets do; for the networks
here (<= 11 M parameters, 45 MB per step) that costs milliseconds on NVLink/PCIe.

BatchNorm. Each rank normalises its training rows with its own batch statistics (B / N samples,
as in standard DDP; SyncBatchNorm needs CUDA and would not run in the gloo tests); the running
statistics are averaged across ranks every step, so every rank's network, and the checkpoint,
stay identical. This is the one place where a world-N run differs from the world-1 run beyond
floating-point summation order: the results are equal in distribution, not bit for bit.

Checkpoints hold plain (unwrapped) state, the same on every rank, so a run checkpointed at one
world size resumes at any other. World size 1 runs none of this: no process group exists and
every helper is the identity, so the single-process path is bit-identical to what it was.
"""

from core.distributed.commands import devices_in_use
from core.distributed.group import (
    RanksDiverged,
    broadcast_tree,
    check_same,
    check_state,
    gather_rows,
    is_leader,
    rank,
    reduce_step,
    share,
    solo,
    world_size,
)
from core.distributed.launch import DEFAULT_TIMEOUT_S, launched, parse_devices
from core.errors import RankLost

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RankLost",
    "RanksDiverged",
    "broadcast_tree",
    "check_same",
    "devices_in_use",
    "gather_rows",
    "is_leader",
    "launched",
    "check_state",
    "share",
    "parse_devices",
    "rank",
    "reduce_step",
    "solo",
    "world_size",
]
