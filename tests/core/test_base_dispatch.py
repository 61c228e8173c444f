"""run_job dispatches every base method (and auto-K) through run_base, with RUC on top, on digits.

Tiny budgets (a few epochs each, RUC 2 epochs) keep every job to seconds on one CPU thread; the
accuracy bar is "far above chance" (0.1 for 10 classes), not the methods' quality, which
tests/core/test_base_methods.py measures. Measured here (seed 0): base network accuracy scan 0.59,
dec 0.44, idec 0.60, dcn 0.69, gcc 0.54, and 0.53; k-means with auto-K 0.77 at K=11 (votes:
silhouette 9, eigengap 11, x-means 15, g-means 15, DP-means 6). The whole file takes ~40 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.hooks import RunHooks
from core.pipeline import run_job
from core.spec import AttackSpec, AutoKSpec, BaseSpec, EvaluateSpec, JobSpec, RefineSpec

RUC_EPOCHS = 2
# Per-method budgets: the smallest that clear the accuracy bar with a margin.
_DEEP = {"pretrain_epochs": 10, "epochs": 5, "hidden_dims": [256, 256]}
BUDGETS: dict[str, dict[str, Any]] = {
    "scan": {"scan": {"epochs": 10, "self_label_epochs": 2, "heads": 3}},
    "dec": {"deep": _DEEP},
    "idec": {"deep": _DEEP},
    "dcn": {"deep": _DEEP},
    "gcc": {"gcc": {"epochs": 12}},
    "and": {"and": {"rounds": 2, "epochs_per_round": 2, "lr": 0.1, "batch_size": 128}},
}


def _spec(method: str, *, num_clusters: int | None = 10, **base: Any) -> JobSpec:
    return JobSpec(
        dataset_id="digits",
        num_clusters=num_clusters,
        seed=0,
        base=BaseSpec(
            method=method,
            pca_dim=30,
            kmeans_restarts=3,
            fit_epochs=5,
            backbone="small_cnn",
            **BUDGETS.get(method, {}),
            **base,
        ),
        refine=RefineSpec(
            strategy="hybrid",
            knn_k=10,
            confidence_threshold=0.9,
            epochs=RUC_EPOCHS,
            batch_size=128,
            weak_augmentations=1,
        ),
        evaluate=EvaluateSpec(attacks=[AttackSpec(kind="fgsm", eps=[8 / 255])], attack_max_samples=50),
    )


def _run(spec: JobSpec, dataset: Any, work_dir: Path) -> tuple[dict, list[dict], list[tuple[str, float]]]:
    """The result, the rows hooks.on_epoch saw, and (stage, fraction) of every progress report."""
    epochs: list[dict] = []
    progress: list[tuple[str, float]] = []
    stage = [""]

    def on_stage(name: str) -> None:
        stage[0] = name

    hooks = RunHooks(
        on_stage=on_stage,
        on_epoch=epochs.append,
        on_progress=lambda f, _e, _t: progress.append((stage[0], f)),
    )
    out = run_job(spec, dataset, device="cpu", work_dir=work_dir, hooks=hooks)
    # The returned result is plain JSON and is what result.json holds.
    assert json.loads(json.dumps(out.result, allow_nan=False)) == out.result
    assert json.loads(out.artifacts["result.json"].read_text()) == out.result
    return out.result, epochs, progress


def _base_progress(progress: list[tuple[str, float]]) -> list[float]:
    return [f for s, f in progress if s == "base_clustering"]


@pytest.mark.parametrize("method", sorted(BUDGETS))
def test_every_registered_method_runs_under_ruc(digits_dataset, tmp_path: Path, method: str) -> None:
    r, epochs, progress = _run(_spec(method), digits_dataset, tmp_path)
    info = r["base_info"]
    summary = f"{method}: base acc {r['base']['acc']:.3f}, refined acc {r['refined']['acc']:.3f}"
    print(summary)
    assert info["method"] == r["spec"]["base"]["method"] == method
    assert info["num_clusters"] == 10 and "auto_k" not in info
    assert r["base"]["acc"] > 0.3, summary
    assert r["refined"]["acc"] is not None and len(r["refined"]["cluster_sizes"]) == 10
    # The method's metric space is the one the clean set was sampled in.
    assert info["embedding_source"] == f"{method}_embedding"
    # Base-stage epochs live in base_info only; on_epoch and per_epoch carry RUC's epochs.
    method_rows = info[method]["per_epoch"]
    assert method_rows and all(row["phase"].startswith("base:") for row in method_rows)
    assert len(epochs) == len(r["per_epoch"]) == RUC_EPOCHS
    assert not any(str(row.get("phase", "")).startswith("base:") for row in epochs)
    assert sum(info[method]["cluster_sizes"]) == digits_dataset.n
    # Stage progress keeps rising through the method's epochs and the base network's fitting.
    fractions = _base_progress(progress)
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == 1.0
    assert len(fractions) >= len(method_rows)


def test_kmeans_with_auto_k_reports_the_chosen_k_and_votes(digits_dataset, tmp_path: Path) -> None:
    auto_k = AutoKSpec(k_min=5, k_max=15)
    r, epochs, progress = _run(_spec("kmeans", num_clusters=None, auto_k=auto_k), digits_dataset, tmp_path)
    ak = r["base_info"]["auto_k"]
    k = ak["k"]
    print(f"auto-K {k}, votes {ak['votes']}, base acc {r['base']['acc']:.3f}")
    assert 8 <= k <= 12
    assert set(ak["votes"]) == set(auto_k.estimators)
    assert all(5 <= v <= 15 for v in ak["votes"].values())
    # The job ran with the chosen K from k-means to the refined ensemble.
    assert r["base_info"]["num_clusters"] == k and r["spec"]["num_clusters"] is None
    assert len(r["base_info"]["kmeans"]["cluster_sizes"]) == k
    assert len(r["base"]["cluster_sizes"]) == len(r["refined"]["cluster_sizes"]) == k
    assert r["base"]["acc"] > 0.3
    assert len(epochs) == RUC_EPOCHS
    fractions = _base_progress(progress)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
