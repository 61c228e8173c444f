"""Several refinement runs of one job: the figures of each, their mean and std, the best run.

The best run is chosen without labels: among the runs whose collapse signs stay quiet (all runs
when every one fired), the run whose assignments agree most with the other runs' (mean adjusted
Rand index to each other run: the consensus run, least driven by its seed); ties, and a single
run, go to the earliest run.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from core.metrics import ari
from core.pipeline.evaluating import RunEvaluation

_REPORT_FIGURES = ("acc", "nmi", "ari", "ece", "many_to_one_acc", "mean_confidence")
BEST_RUN_CRITERION = (
    "label-free: runs without collapse signs first, then the highest mean adjusted Rand index of "
    "its assignments to the other runs' (consensus); ties to the earliest run"
)


def _attack_name(a: dict[str, Any]) -> str:
    steps = f"_steps{a['steps']}" if a.get("steps") is not None else ""
    return f"{a['kind']}_eps{a['eps']:.4f}{steps}"


def run_figures(ev: RunEvaluation) -> dict[str, float | None]:
    """The flat figures of one run that are averaged over runs (None where labels are missing)."""
    out: dict[str, float | None] = {name: ev.report.get(name) for name in _REPORT_FIGURES}
    out["agreement_with_base"] = ev.agreement["aligned"]
    out["final_clean_size"] = float(ev.final_clean["size"])
    out["robustness.clean_accuracy"] = ev.robustness.get("clean_accuracy")
    for a in ev.robustness["attacks"]:
        out[f"robustness.{_attack_name(a)}.accuracy"] = a["accuracy"]
        out[f"robustness.{_attack_name(a)}.stability"] = a["stability"]
    return out


def summarise(figures: list[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per figure: mean, std (sample std, ddof = 1; None for one run) and the values of each run."""
    out: dict[str, dict[str, Any]] = {}
    for name in figures[0]:
        values = [f[name] for f in figures]
        known = [float(v) for v in values if v is not None]
        complete = len(known) == len(values)
        out[name] = {
            "mean": statistics.fmean(known) if complete and known else None,
            "std": statistics.stdev(known) if complete and len(known) > 1 else None,
            "values": values,
        }
    return out


def consensus_scores(preds: list[np.ndarray]) -> list[float | None]:
    """Mean ARI of each run's assignments (N,) to every other run's; None for a single run."""
    if len(preds) < 2:
        return [None] * len(preds)
    r = len(preds)
    pair = np.eye(r)
    for i in range(r):
        for j in range(i + 1, r):
            pair[i, j] = pair[j, i] = ari(preds[i], preds[j])
    return [float((pair[i].sum() - 1.0) / (r - 1)) for i in range(r)]


def best_run(evals: list[RunEvaluation]) -> dict[str, Any]:
    """{index, seed, criterion, consensus, quiet}: the run whose artifacts the job returns."""
    scores = consensus_scores([ev.probs.argmax(1) for ev in evals])
    quiet = [not ev.collapse["suspected"] for ev in evals]
    candidates = [i for i in range(len(evals)) if quiet[i]] or list(range(len(evals)))
    best = max(candidates, key=lambda i: (scores[i] if scores[i] is not None else 0.0, -i))
    return {
        "index": best,
        "seed": evals[best].seed,
        "criterion": BEST_RUN_CRITERION,
        "consensus": scores,
        "quiet": quiet,
    }
