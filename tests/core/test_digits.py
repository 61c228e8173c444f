"""Acceptance test of the whole library on real data: with the service's defaults, RUC beats its base.

scikit-learn's digits (1,797 8x8 grey images, 10 classes, shipped with scikit-learn) through
``run_job`` on the CPU with only what a new user sets: ``num_clusters``, ``seed``,
``refine.epochs`` and, for CPU time, ``base.backbone: small_cnn``. Everything else is the
default: k-means on a PCA of the pixels, the base network fitted to it with plain cross-entropy
(overconfident), the metric clean set with k from the data (10 here), and RUC with schedules,
batch size and label smoothing that follow the job (B = 64, eps = 0.2, lambda_u ramped over the
run, tau2 stepping every fifth). Single-threaded (tests/conftest.py).

Measured per seed, base -> refined (2026-12-01, this trainer and these defaults):

* 10 epochs: accuracy 0.816 -> 0.820, 0.820 -> 0.838, 0.779 -> 0.799 (mean +1.4 points);
  ECE 0.091 -> 0.032, 0.086 -> 0.036, 0.128 -> 0.040.
* 30 epochs: accuracy 0.816 -> 0.831, 0.820 -> 0.844, 0.779 -> 0.801 (mean +2.0 points);
  ECE 0.091 -> 0.020, 0.086 -> 0.031, 0.128 -> 0.035.

The suite runs the 10-epoch budget (the short one a user on a tight budget sets; the one the old
defaults broke); the 30-epoch figures come from ``bench/ruc_quality.py digits --seeds 0,1,2 --epochs 30``,
which costs 3.5 minutes on this machine and is kept out of the suite's 20-minute budget.

Before these defaults (A.2's absolute values: B = 200, eps = 0.5, hybrid at tau1 = 0.99, lambda_u
ramped over 200 epochs) the same 10-epoch jobs lost 11 to 17 points (0.703, 0.651, 0.614).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from core.pipeline import run_job
from core.spec import JobSpec

SEEDS = (0, 1, 2)


def _defaults_job(epochs: int, seed: int) -> JobSpec:
    return JobSpec(
        dataset_id="digits",
        num_clusters=10,
        seed=seed,
        base={"backbone": "small_cnn"},
        refine={"epochs": epochs},
        evaluate={"attacks": [{"kind": "fgsm", "eps": [8 / 255]}], "attack_max_samples": 300},
    )


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [10])
def test_ruc_with_defaults_beats_its_base_on_digits_over_three_seeds(
    digits_dataset, tmp_path: Path, epochs: int
) -> None:
    runs: list[dict[str, Any]] = []
    for seed in SEEDS:
        runs.append(
            run_job(
                _defaults_job(epochs, seed), digits_dataset, device="cpu", work_dir=tmp_path / str(seed)
            ).result
        )
    rows = [(r["base"]["acc"], r["refined"]["acc"], r["base"]["ece"], r["refined"]["ece"]) for r in runs]
    summary = "; ".join(f"acc {b:.3f}->{f:.3f} ece {be:.3f}->{fe:.3f}" for b, f, be, fe in rows)
    gain = statistics.fmean(f - b for b, f, _, _ in rows)
    assert gain > 0.005, summary
    assert statistics.fmean(fe for *_, fe in rows) < statistics.fmean(be for _, _, be, _ in rows) - 0.03, (
        summary
    )
    assert all(f >= b - 0.01 for b, f, _, _ in rows), summary  # no seed loses more than a point
    for r in runs:
        assert not r["collapse"]["suspected"], (r["collapse"], summary)
        # what a user reads about the values the job chose for them
        eff = r["effective"]
        assert eff["batch_size"] == 64 and eff["label_smoothing"] == pytest.approx(0.2) and eff["knn_k"] == 10
        assert eff["refurbish_every"] == pytest.approx(epochs / 5)
        assert r["clean_set"]["selected"] == "metric" and "default" in r["clean_set"]["reason"]
        # refurbishing grew the clean set by exactly the samples it refurbished
        refurbished = sum(m["refurbished"] for m in r["per_epoch"])
        assert r["clean_set"]["final"]["size"] == r["clean_set"]["initial"]["size"] + refurbished
        assert r["per_epoch"][-1]["tau2"] == pytest.approx(0.98)


@pytest.mark.slow
def test_two_clusters_run_and_keep_or_improve_their_base(digits_dataset, tmp_path: Path) -> None:
    """K = 2 (digits 3 and 8): the K-aware smoothing keeps the pseudo-label the largest target entry."""
    import torch

    from core.datasets import ImageDataset
    from core.ruc.losses import smooth_labels

    keep = (digits_dataset.labels == 3) | (digits_dataset.labels == 8)
    pair = ImageDataset(images=digits_dataset.images[keep], labels=digits_dataset.labels[keep])
    r = run_job(
        JobSpec(
            dataset_id="pair", num_clusters=2, seed=0, base={"backbone": "small_cnn"}, refine={"epochs": 10}
        ),
        pair,
        device="cpu",
        work_dir=tmp_path,
    ).result
    eps = r["effective"]["label_smoothing"]
    assert eps == pytest.approx(0.1)
    target = smooth_labels(torch.tensor([0]), 2, eps)[0]
    assert target[0] > 8 * target[1]
    assert r["refined"]["acc"] >= r["base"]["acc"] - 0.005, (r["base"]["acc"], r["refined"]["acc"])
