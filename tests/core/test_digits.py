"""Acceptance test of the whole library on real data: RUC beats its own base clustering on digits.

scikit-learn's digits (1,797 8x8 grey images, 10 classes, shipped with scikit-learn) through
``run_job`` on the CPU: k-means on a 50-d PCA of the pixels, a small CNN fitted to the k-means
labels with plain cross-entropy (the overconfident base network), the metric clean set (kNN in the
PCA space), RUC, evaluation. Fixed seed; everything runs single-threaded (see tests/conftest.py).

Settings that differ from the paper's ImageNet-scale defaults (A.2), and why:

* base.fit_epochs=FIT_EPOCHS: long enough for the base network to (nearly) memorise its k-means
  labels, which is what makes clustering models overconfident (its mean confidence exceeds its
  accuracy by about 0.1 here).
* refine.epochs=10 instead of 200, so the test takes about a minute; the schedules that are
  defined in epochs are scaled with it: refurbish_every=3 (tau2 rises 0.9 -> 0.96 over the run,
  as over the paper's 200 epochs with every=40) and lambda_u_rampup_epochs=10 (the ramp reaches
  1 at the end, as the script's ramp over 200 epochs does).
* refine.lr=0.05: ten epochs of ~14 steps need a larger step than 0.01 to move a new head.
* refine.label_smoothing=0.2 instead of 0.5: with K=10, eps=0.5 sets the strong-view target of
  the pseudo-label to 0.5; after 10 epochs (before the sharpened MixMatch targets have pulled
  confidences up, which takes the paper's 200) that leaves the ensemble underconfident
  (measured: mean confidence 0.61 at accuracy 0.82, ECE 0.22). eps=0.2 keeps smoothing's role of
  not fitting noisy labels fully.
* refine.weak_augmentations=1 (M of Algorithm 1; the paper uses 2): one weak view per sample
  halves the MixMatch cost. When this test was written (co-refinement then used the partner's
  mean over weak views of x), seed 0 gave accuracy 0.845 with one view and 0.833 with two, and
  other settings (all with one view) landed between 0.825 and 0.846.
  With the current trainer (the partner's prediction table on the unaugmented x, Eq. (11)), base
  -> refined accuracy per seed (base and RUC both reseeded): seed 0 0.817 -> 0.839, seed 1
  0.828 -> 0.849, seed 2 0.782 -> 0.790, seed 3 0.792 -> 0.829; ECE fell in every case (to
  0.03-0.07). So RUC reliably helps here, but the 2-point margin asserted below holds for seed 0,
  not for every seed.
* knn_k=10 instead of 100: ~180 images per class; k=100 would reach far into other classes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.pipeline import run_job
from core.spec import AttackSpec, BaseSpec, EvaluateSpec, JobSpec, RefineSpec

FIT_EPOCHS = 30


def _digits_spec() -> JobSpec:
    return JobSpec(
        dataset_id="digits",
        num_clusters=10,
        seed=0,
        base=BaseSpec(
            method="kmeans", pca_dim=50, kmeans_restarts=10, fit_epochs=FIT_EPOCHS, backbone="small_cnn"
        ),
        refine=RefineSpec(
            strategy="metric",
            knn_k=10,
            epochs=10,
            batch_size=128,
            lr=0.05,
            label_smoothing=0.2,
            refurbish_every=3,
            lambda_u_rampup_epochs=10,
            weak_augmentations=1,
        ),
        evaluate=EvaluateSpec(attacks=[AttackSpec(kind="fgsm", eps=[8 / 255])], attack_max_samples=300),
    )


@pytest.mark.slow
def test_ruc_beats_overconfident_base_on_digits(digits_dataset, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = run_job(_digits_spec(), digits_dataset, device="cpu", work_dir=tmp_path).result
    base, refined, clean = r["base"], r["refined"], r["clean_set"]["initial"]
    summary = (
        f"base acc={base['acc']:.4f} ece={base['ece']:.4f} conf={base['mean_confidence']:.4f} | "
        f"refined acc={refined['acc']:.4f} ece={refined['ece']:.4f} conf={refined['mean_confidence']:.4f} | "
        f"metric clean set precision={clean['precision']:.4f} size={clean['size']} | "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print(summary)
    # The base network is the overconfident model RUC is meant to fix.
    assert base["mean_confidence"] > base["acc"] + 0.05, summary
    # The metric strategy's clean set is cleaner than the pseudo-labels as a whole, whose
    # precision is the base accuracy.
    assert r["clean_set"]["selected_size"] == clean["size"] < digits_dataset.n, summary
    assert clean["precision"] > base["acc"] + 0.02, summary
    # RUC: more accurate and better calibrated than its base.
    assert refined["acc"] >= base["acc"] + 0.02, summary
    assert refined["ece"] < base["ece"], summary
    # Refurbishing grew the clean set.
    assert r["clean_set"]["final"]["size"] >= clean["size"], summary
