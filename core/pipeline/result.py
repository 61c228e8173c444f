"""Assembly of the result dict (also result.json) from the stages' outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.pipeline.evaluating import RunEvaluation, clean_summary
from core.pipeline.runs import run_figures, summarise
from core.pipeline.stages import CleanSelection
from core.spec import JobSpec

COLLAPSE_RETURNS = (
    "the job still succeeds and returns the refined ensemble and its assignments (of the best run), "
    "flagged here and in a warning event; assignments.csv keeps each image's base cluster next to the "
    "refined one, so a client that distrusts the refinement uses base_cluster instead"
)
_RUN_REPORT_KEYS = ("acc", "nmi", "ari", "ece", "many_to_one_acc", "mean_confidence", "cluster_sizes")


def clean_set_block(
    spec: JobSpec,
    sel: CleanSelection,
    final: dict[str, Any],
    pseudo: np.ndarray,
    y: np.ndarray | None,
    k: int,
) -> dict[str, Any]:
    """What was selected and why (the strategy's inputs and decision), the initial and final sets."""
    r = spec.refine
    return {
        "strategy": r.strategy,
        "selected": sel.decision["selected"],
        "reason": sel.decision["reason"],
        "decision": {key: v for key, v in sel.decision.items() if key not in ("selected", "reason")},
        "knn_k": sel.knn_k if r.strategy != "confidence" else None,
        "confidence_threshold": r.confidence_threshold if r.strategy != "metric" else None,
        "selected_size": sel.selected_size,
        "fallback": list(sel.fallback),
        "initial": clean_summary(sel.mask.cpu().numpy(), pseudo, y, k),
        "final": final,
    }


def run_entry(index: int, ev: RunEvaluation) -> dict[str, Any]:
    """One run's block in ``result["runs"]``."""
    return {
        "index": index,
        "seed": ev.seed,
        "refined": {key: ev.report.get(key) for key in _RUN_REPORT_KEYS},
        "robustness": ev.robustness,
        "agreement": ev.agreement["aligned"],
        "collapse": ev.collapse,
        "final_clean_set": {key: ev.final_clean.get(key) for key in ("size", "precision", "recall", "f1")},
    }


def assemble(
    *,
    base_report: dict[str, Any],
    base_robustness: dict[str, Any],
    evals: list[RunEvaluation],
    best: dict[str, Any],
    clean_set: dict[str, Any],
    per_epoch: list[dict[str, Any]],
    num_attacked: int,
) -> dict[str, Any]:
    """The quality part of the result; the best run's figures are the top-level ``refined`` ones."""
    chosen = evals[best["index"]]
    return {
        "base": base_report,
        "refined": chosen.report,
        "clean_set": clean_set,
        "robustness": {"num_samples": num_attacked, "base": base_robustness, "refined": chosen.robustness},
        "per_epoch": per_epoch,
        "agreement": chosen.agreement,
        "collapse": {**chosen.collapse, "returned": COLLAPSE_RETURNS},
        "runs": [run_entry(i, ev) for i, ev in enumerate(evals)],
        "summary": summarise([run_figures(ev) for ev in evals]),
        "best_run": best,
    }
