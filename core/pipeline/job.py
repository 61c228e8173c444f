"""``run_job``: the stages in order (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.clustering.base import BaseOutput
from core.datasets import ImageDataset
from core.distributed import devices_in_use, world_size
from core.hooks import RunHooks
from core.pipeline.artifacts import json_safe, save_ensemble, write_assignments, write_result
from core.pipeline.context import JobContext
from core.pipeline.evaluating import (
    RunEvaluation,
    attack_subset,
    evaluate_base,
    evaluate_run,
    robustness,
)
from core.pipeline.layout import ARTIFACT_NAMES, ONNX_NAME
from core.pipeline.refining import refining, run_per_epoch
from core.pipeline.result import assemble, clean_set_block
from core.pipeline.runs import best_run
from core.pipeline.stages import CleanSelection, base_clustering, loading, sampling
from core.predict.onnx_export import export_onnx
from core.report import write_report
from core.result_schema import validated_result
from core.ruc import RucOutput
from core.spec import JobSpec


@dataclass
class JobOutcome:
    """result: JSON-serialisable dict (also written to result.json). artifacts: name -> path."""

    result: dict[str, Any]
    artifacts: dict[str, Path]


def evaluating(
    ctx: JobContext, base: BaseOutput, rucs: list[RucOutput], seeds: list[int], y: np.ndarray | None, k: int
) -> tuple[dict[str, Any], dict[str, Any], list[RunEvaluation], int]:
    """(base report, base robustness, one evaluation per run, attacked sample count); warns on collapse."""
    base_report, base_probs = evaluate_base(ctx, base, y, k)
    attacked = attack_subset(ctx, y)
    base_rob = robustness(ctx, base.model.eval(), base_report, attacked)
    ctx.hooks.on_progress(1 / (len(rucs) + 1), None, None)
    evals = []
    for i, (ruc, seed) in enumerate(zip(rucs, seeds, strict=True)):
        ev = evaluate_run(ctx, ruc, seed, base_probs=base_probs, y=y, k=k, attacked=attacked)
        evals.append(ev)
        if ev.collapse["suspected"]:
            who = f"run {i} (seed {seed})" if len(rucs) > 1 else "the refinement"
            signs = "; ".join(f["message"] for f in ev.collapse["fired"])
            ctx.warn(f"collapse signs: {who} may have collapsed: {signs}")
        ctx.hooks.on_progress((i + 2) / (len(rucs) + 1), None, None)
    return base_report, base_rob, evals, int(attacked.x.shape[0])


def saving(
    ctx: JobContext,
    base: BaseOutput,
    chosen: RucOutput,
    chosen_eval: RunEvaluation,
) -> dict[str, Path]:
    """The ensemble and assignments of the chosen run; result.json is written last by ``run_job``."""
    paths = {name: ctx.work_dir / name for name in ARTIFACT_NAMES}
    ds = ctx.dataset
    images = ctx.inputs is None or ctx.inputs.kind == "images"
    save_ensemble(
        chosen,
        base.model,
        ctx.spec,
        paths["refined_ensemble.safetensors"],
        image_shape=(ds.height, ds.width, ds.channels) if images else None,
    )
    write_assignments(
        paths["assignments.csv"],
        base.probs.detach().float().cpu().numpy(),
        chosen_eval.probs,
        chosen.clean_mask.cpu().numpy(),
    )
    return paths


def write_onnx(ctx: JobContext, chosen: RucOutput) -> dict[str, Path]:
    """``model.onnx`` of the chosen run; an export that fails leaves it out with a note, never the job."""
    ds = ctx.dataset
    path = ctx.work_dir / ONNX_NAME
    try:
        if ctx.inputs is not None and ctx.inputs.kind == "features":
            export_onnx(chosen.models, path, feature_dim=ctx.inputs.dim)
        else:
            export_onnx(chosen.models, path, image_shape=(ds.height, ds.width, ds.channels))
    except Exception as exc:  # a convenience artifact: its failure must not fail the job
        ctx.warn(f"{ONNX_NAME} not written: the export failed ({type(exc).__name__})")
        return {}
    return {ONNX_NAME: path}


def _quality(
    ctx: JobContext,
    sel: CleanSelection,
    base: BaseOutput,
    y: np.ndarray | None,
    k: int,
    evaluated: tuple[dict[str, Any], dict[str, Any], list[RunEvaluation], int],
    rucs: list[RucOutput],
    seeds: list[int],
) -> tuple[dict[str, Any], int]:
    base_report, base_rob, evals, n_att = evaluated
    best = best_run(evals)
    i = best["index"]
    per_epoch = [
        m
        for j, ruc in enumerate(rucs)
        for m in run_per_epoch(ruc, j, seeds[j], len(rucs), ctx.spec.refine.epochs)
    ]
    clean_set = clean_set_block(ctx.spec, sel, evals[i].final_clean, base.pseudo_labels.cpu().numpy(), y, k)
    result = assemble(
        base_report=base_report,
        base_robustness=base_rob,
        evals=evals,
        best=best,
        clean_set=clean_set,
        per_epoch=per_epoch,
        num_attacked=n_att,
    )
    return result, i


def run_job(
    spec: JobSpec,
    dataset: ImageDataset,
    *,
    device: str | torch.device,
    work_dir: Path,
    checkpoint_paths: dict[str, Path] | None = None,
    hooks: RunHooks | None = None,
    resume: bool = True,
    memory_limit_bytes: int | None = None,
) -> JobOutcome:
    """Run the whole job of ``spec`` on ``dataset`` (see the package docstring) and write its artifacts.

    device: where models and images live. work_dir: the job's private folder (created).
    checkpoint_paths: uploaded checkpoint id -> file. resume: reuse ``base.pt`` and continue from
    the RUC checkpoints when they belong to this job; False recomputes them.
    memory_limit_bytes: the memory preflight's cap (core/ruc/preflight.py): None runs no preflight;
    0 takes the device's own limit (CUDA: its free memory; CPU: none, the preflight only measures);
    a positive number caps it. The result's ``preflight`` block reports what it measured and chose.
    Raises CoreInputError for unusable inputs, StopRequested when ``hooks.should_stop()`` and
    InsufficientMemory when the preflight finds that the job cannot fit its limit.
    """
    ctx = JobContext(
        spec=spec,
        dataset=dataset,
        device=torch.device(device),
        work_dir=Path(work_dir),
        checkpoint_paths={key: Path(v) for key, v in (checkpoint_paths or {}).items()},
        hooks=hooks or RunHooks(),
        resume=resume,
        notes=list(getattr(dataset, "notes", []) or []),
        memory_limit_bytes=memory_limit_bytes,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    seeds = spec.refinement_seeds()
    with ctx.stage("loading"):
        images_u8, y = loading(ctx)
    with ctx.stage("base_clustering"):
        base, cached = base_clustering(ctx)
        k = int(base.probs.shape[1])  # as the base produced it (an estimate when auto-K)
    with ctx.stage("sampling"):
        sel = sampling(ctx, base, k)
    with ctx.stage("refining"):
        rucs = refining(ctx, base, images_u8, sel.mask, k, seeds, y)
    with ctx.stage("evaluating"):
        evaluated = evaluating(ctx, base, rucs, seeds, y, k)
    with ctx.stage("saving"):
        quality, best = _quality(ctx, sel, base, y, k, evaluated, rucs, seeds)
        paths = saving(ctx, base, rucs[best], evaluated[2][best])
        paths.update(write_onnx(ctx, rucs[best]))
        result: dict[str, Any] = {
            **quality,
            "notes": ctx.notes,
            "timings": {},
            "device": str(ctx.device),
            "world_size": world_size(),
            "devices": devices_in_use(ctx.device),
            "spec": spec.model_dump(mode="json"),
            "dataset": dataset.facts(),
            "base_info": {**base.info, "reused_from_cache": cached},
            "effective": {**rucs[best].effective, "knn_k": sel.knn_k},
        }
        if ctx.preflight is not None:
            result["preflight"] = ctx.preflight
    # The saving stage's own time is known only now; result.json carries all stages.
    result["timings"] = dict(ctx.timings)
    # The report reads the finished result; its warnings land in ctx.notes, i.e. in result.json.
    paths.update(write_report(json_safe(result), ctx.work_dir, warn=ctx.warn)[0])
    # One definition of the result: a key that drifted from the published schema fails here.
    result = validated_result(json_safe(result))
    write_result(result, paths["result.json"])
    ctx.hooks.on_progress(1.0, None, None)
    return JobOutcome(result=result, artifacts=paths)
