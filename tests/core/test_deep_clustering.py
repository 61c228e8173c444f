"""DEC, IDEC and DCN (with and without BRB) on scikit-learn's digits: far above chance, BRB's resets
recluster, and BRB's from-scratch claim over three seeds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from base_digits import digits_with_pca, hungarian_acc

from core.clustering.deep_clustering import (
    deep_cluster,
    pretrain_autoencoder,
)
from core.clustering.methods import MethodInputs, run_method
from core.hooks import RunHooks
from core.models.autoencoder import MlpAutoencoder
from core.spec import BaseSpec, BrbSpec, DeepClusteringSpec

# ------------------------------------------------------------------ DEC / IDEC / DCN (+ BRB)

# 50 pre-training epochs: with 25 the latent space clusters worse than the raw pixels (k-means
# accuracy 0.67-0.72 vs 0.79 on pixels, seeds 0-2), and a soft reset then wipes out much of it.
_DEEP = DeepClusteringSpec(pretrain_epochs=50, epochs=30, hidden_dims=[256, 256], latent_dim=10)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(images01 (N, 1, 8, 8), PCA-30 features (N, 30), labels (N,))."""
    return digits_with_pca()


@pytest.fixture(scope="module")
def pretrained(digits) -> dict[int, MlpAutoencoder]:
    """One pre-trained autoencoder per seed, shared by the methods (pre-training does not depend on them)."""
    x = digits[0].flatten(1)
    return {s: pretrain_autoencoder(x, _DEEP, seed=s, hooks=RunHooks(), total_epochs=1)[0] for s in (0, 1, 2)}


@pytest.mark.parametrize("method", ["dec", "idec", "dcn"])
def test_deep_clustering_far_above_chance(digits, pretrained, method: str) -> None:
    x, _, y = digits
    probs, z, info = deep_cluster(
        x.flatten(1),
        method,
        _DEEP,
        BrbSpec(),
        num_clusters=10,
        seed=0,
        pretrained=copy.deepcopy(pretrained[0]),
    )
    acc = hungarian_acc(y, probs.argmax(1))
    print(f"{method} acc {acc:.3f}")
    assert acc > 0.5
    assert z.shape == (len(y), 10) and torch.allclose(probs.sum(1), torch.ones(len(y)), atol=1e-5)


def test_registry_runs_dcn_end_to_end_with_progress(digits) -> None:
    x, feats, y = digits
    seen: list[tuple[float, int | None, int | None]] = []
    spec = BaseSpec(method="dcn", deep=_DEEP.model_copy(update={"pretrain_epochs": 10, "epochs": 10}))
    res = run_method(
        "dcn",
        MethodInputs(x, feats),
        spec,
        num_clusters=10,
        seed=0,
        hooks=RunHooks(on_progress=lambda f, e, t: seen.append((f, e, t))),
    )
    assert seen[-1] == (1.0, 20, 20) and len(seen) == 20
    assert res.info["input"] == "pixels" and hungarian_acc(y, res.pseudo_labels) > 0.4


def test_brb_resets_recluster_and_change_the_run(digits, pretrained) -> None:
    x, _, _ = digits
    cfg = _DEEP.model_copy(update={"epochs": 6})
    runs = {}
    for enabled in (False, True):
        probs, _, info = deep_cluster(
            x.flatten(1),
            "dec",
            cfg,
            BrbSpec(enabled=enabled, reset_interval=2),
            num_clusters=10,
            seed=0,
            pretrained=copy.deepcopy(pretrained[0]),
        )
        runs[enabled] = (probs, info)
    assert runs[False][1]["brb_resets"] == [] and runs[True][1]["brb_resets"] == [2, 4]
    assert not torch.allclose(runs[False][0], runs[True][0])


def _brb_report(x: torch.Tensor, y: np.ndarray, cfg: DeepClusteringSpec, pretrained=None):
    """Accuracy per (method, BRB on/off) over seeds 0-2; the same seed and budget for both arms."""
    brb_on = BrbSpec(enabled=True, reset_interval=20, alpha=0.8)
    report: dict[tuple[str, bool], list[float]] = {}
    for method in ("dec", "idec"):
        for seed in (0, 1, 2):
            for brb in (BrbSpec(), brb_on):
                probs, _, info = deep_cluster(
                    x,
                    method,
                    cfg,
                    brb,
                    num_clusters=10,
                    seed=seed,
                    pretrained=copy.deepcopy(pretrained[seed]) if pretrained is not None else None,
                )
                expected_resets = list(range(20, cfg.epochs, 20)) if brb.enabled else []
                assert info["brb_resets"] == expected_resets
                report.setdefault((method, brb.enabled), []).append(hungarian_acc(y, probs.argmax(1)))
    return report


# BRB's second claim (Miklautz et al., ICLR 2025): it makes training from scratch work. This is the
# setting of its repository's config/autoencoder/no_pretrain.py: no autoencoder pre-training, T=20,
# alpha=0.8, the embedding layer not reset, k-means reclustering after each reset, centroid
# momentum zeroed (their budget is 400 clustering epochs; 100 here). Measured (digits pixels,
# MLP AE 64-256-256-10), accuracy per seed 0/1/2:
#   DEC  off 0.213 0.213 0.209 (mean 0.212)   on 0.285 0.262 0.269 (mean 0.272)
#   IDEC off 0.425 0.521 0.458 (mean 0.468)   on 0.735 0.633 0.676 (mean 0.681)
# Without resets DEC and IDEC collapse onto the random encoder's first k-means partition; each
# reset + reclustering moves them to a better one.
@pytest.mark.slow
def test_brb_is_not_worse_on_average_over_three_seeds_from_scratch(digits) -> None:
    x, _, y = digits
    cfg = _DEEP.model_copy(update={"pretrain_epochs": 0, "epochs": 100})
    report = _brb_report(x.flatten(1), y, cfg)
    print("BRB from scratch, accuracies per seed", report)
    for method in ("dec", "idec"):
        assert np.mean(report[(method, True)]) >= np.mean(report[(method, False)])
    # IDEC's reconstruction keeps the features informative, so there the gain is large
    assert np.mean(report[("idec", True)]) > np.mean(report[("idec", False)]) + 0.1


# After pre-training (BRB's config/autoencoder/baseline_comp.py, with 50 instead of 250
# pre-training and 60 instead of 400 clustering epochs), BRB does not help on digits. Measured,
# accuracy per seed 0/1/2:
#   DEC  off 0.787 0.742 0.746 (mean 0.758)   on 0.763 0.733 0.747 (mean 0.748)
#   IDEC off 0.815 0.748 0.762 (mean 0.775)   on 0.805 0.732 0.734 (mean 0.757)
# Also worse (mean over seeds, off -> on): 25+30 epochs T=10: DEC 0.714 -> 0.681, IDEC 0.713 ->
# 0.692; T=10 over 40/60 epochs; 100 pre-training epochs; alpha 0.9; resetting the embedding
# layer too; He-uniform phi (BRB code's initialiser); batch 32/64/128; DEC targets per batch;
# 200 clustering epochs (seed 0: DEC 0.804 -> 0.770, IDEC 0.841 -> 0.762); an augmentation-
# invariant DEC/IDEC loss as in BRB's configs (seed 0, 200 epochs: DEC 0.827 -> 0.767, IDEC
# 0.835 -> 0.766).
# Why: every reset costs accuracy that the following T epochs do not win back: the k-means
# partition of the perturbed latent space is worse than the one DEC had refined, and DEC then
# sharpens it. BRB's gains after pre-training come from 400 clustering epochs x N/256 steps on
# 5-70k samples; on 1,797 samples (7 steps per epoch) there is little plateau to break.
# At DEC's own size (64-500-500-2000-10, 100 pre-training + 200 clustering epochs; too slow for
# this suite, run by bench/brb_digits.py) DEC does plateau and BRB lifts it on every seed: off
# 0.763 0.820 0.779 (mean 0.787), on 0.784 0.822 0.790 (mean 0.799); IDEC keeps improving without
# resets and BRB still costs it: off 0.841 0.822 0.813 (mean 0.825), on 0.774 0.819 0.780 (0.791).
# This negative result is a benchmark, not a test (it was a strict xfail costing minutes of the suite):
# `bench/brb_digits.py --hidden 256,256 --pretrain-epochs 50 --epochs 60` reproduces the figures above.
