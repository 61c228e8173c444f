"""The refining stage's memory preflight (``core.ruc.preflight``) with what a job adds to it.

* The estimate it reports is ``core.memory.estimate_job_memory`` from the dataset's facts, the one
  the API's submit check uses, at each batch the preflight tries.
* Its record, ``work_dir/preflight.json`` (a resume file, ``layout.resume_files``): a resumed attempt
  of the same spec, device type and cap reuses the first attempt's batch size without measuring
  again, so its RUC checkpoints' fingerprint (which covers the batch size) still matches and it
  resumes, and its result reports the same preflight block.
* Its events: a warning (also a note of the result) when the batch shrank, else an info event.

The spec the runs train with is the job's own when the batch did not shrink (so a job's checkpoints
are those of a job without a preflight), else a copy with the chosen ``batch_size``.
"""

from __future__ import annotations

import json
from typing import Any

from core.atomic import atomic_write_bytes
from core.clustering.base import BaseOutput
from core.memory import MemoryEstimate, estimate_job_memory
from core.pipeline.context import JobContext
from core.pipeline.layout import PREFLIGHT_RECORD
from core.ruc.preflight import device_limit, preflight
from core.spec import RefineSpec


def _vit_facts(model: Any) -> dict[str, Any] | None:
    """The ``vit`` facts the estimate reads (as a checkpoint upload records them) of a ViT backbone."""
    config = getattr(getattr(model, "backbone", None), "config", None)
    if config is None or not hasattr(config, "as_dict"):
        return None
    from core.models.vit import parameter_count

    return {**config.as_dict(), "parameters": parameter_count(config)}


def _record_key(ctx: JobContext) -> dict[str, Any]:
    return {
        "spec": ctx.spec.model_dump(mode="json"),
        "device": ctx.device.type,
        "cap": ctx.memory_limit_bytes,
    }


def _reused(ctx: JobContext) -> dict[str, Any] | None:
    """The first attempt's report when its record belongs to this job, else None."""
    path = ctx.work_dir / PREFLIGHT_RECORD
    if not (ctx.resume and path.is_file()):
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != json.loads(json.dumps(_record_key(ctx))):
        return None
    report = record.get("report")
    return report if isinstance(report, dict) and isinstance(report.get("batch_size"), int) else None


def plan_batch(ctx: JobContext, base: BaseOutput, data: Any, clean: Any, k: int, runs: int) -> RefineSpec:
    """The refine spec the runs train with; sets ``ctx.preflight`` (None when the job has no limit).

    data: what the networks read, on the device; clean: (N,) bool, the initial clean set.
    """
    r = ctx.spec.refine
    if ctx.memory_limit_bytes is None:
        return r
    report = _reused(ctx)
    if report is not None:
        ctx.hooks.on_event(
            "info", f"memory preflight: batch size {report['batch_size']} as the first attempt chose it"
        )
    else:
        facts = ctx.dataset.facts()
        backbone = getattr(base.model, "backbone_name", None)
        vit = _vit_facts(base.model)

        def estimate(b: int) -> MemoryEstimate | None:
            return estimate_job_memory(
                ctx.spec, facts, checkpoint_backbone=backbone, checkpoint_vit=vit, batch_size=b
            )

        report = preflight(
            base.model,
            data,
            base.pseudo_labels,
            clean,
            r,
            num_clusters=k,
            seed=ctx.spec.refinement_seeds()[0],
            limit_bytes=device_limit(ctx.device, ctx.memory_limit_bytes),
            estimate=estimate,
            runs=runs,
        ).as_dict()
        record = {"key": _record_key(ctx), "report": report}
        atomic_write_bytes(ctx.work_dir / PREFLIGHT_RECORD, json.dumps(record).encode())
        if not report["shrunk"]:
            ctx.hooks.on_event("info", f"memory preflight: {report['reason']}")
    if report["shrunk"]:
        ctx.warn(f"memory preflight: {report['reason']}")
    ctx.preflight = report
    if report["batch_size"] == report["requested_batch_size"]:
        return r
    return r.model_copy(update={"batch_size": report["batch_size"]})
