"""The refining stage: one RUC run per refinement seed, all from the same base and clean set.

With several runs (``repeats`` / ``seeds`` in the job spec) the hooks see one continuous
refinement: progress is (run + fraction of run) / runs, epochs are numbered across the runs
(run r's epoch e is ``r * epochs + e`` of ``runs * epochs``), and each per-epoch dict also
carries ``run``, ``seed`` and ``run_epoch``. So progress and epoch counters never go back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.clustering.base import BaseOutput
from core.hooks import RunHooks
from core.pipeline.context import JobContext
from core.pipeline.layout import run_checkpoint
from core.pipeline.preflight import plan_batch
from core.ruc import RucOutput, train_ruc


def _run_epoch(metrics: dict[str, Any], index: int, seed: int, epochs: int) -> dict[str, Any]:
    run_epoch = int(metrics["epoch"])
    return {
        **metrics,
        "epoch": index * epochs + run_epoch,
        "run": index,
        "seed": seed,
        "run_epoch": run_epoch,
    }


def run_hooks(hooks: RunHooks, index: int, seed: int, runs: int, epochs: int) -> RunHooks:
    """Hooks of run ``index`` of ``runs`` that report into ``hooks`` as one refinement (module docstring)."""
    if runs == 1:
        return hooks

    def progress(fraction: float, epoch: int | None, total: int | None) -> None:
        hooks.on_progress(
            (index + fraction) / runs,
            None if epoch is None else index * epochs + epoch,
            None if total is None else runs * total,
        )

    return RunHooks(
        on_stage=hooks.on_stage,
        on_progress=progress,
        on_epoch=lambda m: hooks.on_epoch(_run_epoch(m, index, seed, epochs)),
        on_event=lambda level, msg: hooks.on_event(level, f"run {index} (seed {seed}): {msg}"),
        should_stop=hooks.should_stop,
    )


def run_per_epoch(ruc: RucOutput, index: int, seed: int, runs: int, epochs: int) -> list[dict[str, Any]]:
    """The per-epoch dicts of one run as the hooks saw them (renumbered when there are several runs)."""
    if runs == 1:
        return list(ruc.per_epoch)
    return [_run_epoch(m, index, seed, epochs) for m in ruc.per_epoch]


def refining(
    ctx: JobContext,
    base: BaseOutput,
    images_u8: torch.Tensor,
    clean: torch.Tensor,
    k: int,
    seeds: list[int],
    y: np.ndarray | None,
) -> list[RucOutput]:
    """One ``train_ruc`` per seed; each checkpoints in its own folder (``layout.run_checkpoint``).

    images_u8: (N, H, W, C) uint8 on the device; clean: (N,) bool, the initial clean set; y: the
    evaluation labels or None (per-epoch clean-set quality only, never training). The memory
    preflight (``preflight.plan_batch``) runs first and may lower the batch size of every run.
    """
    r = plan_batch(ctx, base, images_u8, clean, k, len(seeds))
    outputs = []
    for index, seed in enumerate(seeds):
        outputs.append(
            train_ruc(
                base.model,
                images_u8,
                base.pseudo_labels,
                clean,
                r,
                num_clusters=k,
                seed=seed,
                device=ctx.device,
                hooks=run_hooks(ctx.hooks, index, seed, len(seeds), r.epochs),
                checkpoint_path=run_checkpoint(ctx.work_dir, index, seed, len(seeds)),
                resume=ctx.resume,
                labels=y,
            )
        )
    return outputs
