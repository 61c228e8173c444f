"""Auto-K: each estimator on blobs with a known count, censoring at the range's bounds, the consensus
rules, and digits (bench/autok_digits.py measures more subsets and seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import silhouette_score as sk_silhouette

from core.clustering.autok import (
    Vote,
    anderson_darling,
    censor,
    consensus_vote,
    decide,
    dpmeans_k,
    eigengap_k,
    estimate_k,
    gmeans_k,
    silhouette_k,
    silhouette_score,
    xmeans_k,
)
from core.clustering.base import pca_features
from core.errors import StopRequested
from core.hooks import RunHooks
from core.spec import AutoKSpec


def _blobs(k: int, n_per: int = 80, dim: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    return torch.cat([c + torch.randn(n_per, dim, generator=g) for c in centres])


def test_silhouette_matches_scikit_learn() -> None:
    x = _blobs(3, n_per=40)
    labels = torch.arange(x.shape[0]) % 3  # a poor labelling: negative silhouettes are exercised
    for lab in (labels, torch.arange(x.shape[0]) // 40):
        ours = silhouette_score(x, lab, chunk_size=17)
        assert ours == pytest.approx(sk_silhouette(x.numpy(), lab.numpy()), abs=1e-5)


def test_anderson_darling_accepts_normal_rejects_bimodal() -> None:
    rng = np.random.default_rng(0)
    assert anderson_darling(rng.normal(size=500)) < 1.8692
    bimodal = np.concatenate([rng.normal(-3, 1, 250), rng.normal(3, 1, 250)])
    assert anderson_darling(bimodal) > 10


@pytest.mark.parametrize("k", [3, 6])
def test_each_estimator_finds_well_separated_blobs(k: int) -> None:
    x = _blobs(k, seed=k)
    assert silhouette_k(x, 2, 10, seed=0)[0] == k
    assert eigengap_k(x, 2, 10)[0] == k
    assert xmeans_k(x, 2, 10, seed=0)[0] == k
    assert gmeans_k(x, 2, 10, seed=0)[0] == k
    assert dpmeans_k(x, 2, 10, lam=None)[0] == k


def test_consensus_median_and_mode_tie_breaking() -> None:
    assert consensus_vote([9, 11, 20, 20, 5]) == 11
    assert consensus_vote([4, 8]) == 4  # lower median for an even count
    assert consensus_vote([3, 3, 7, 9], "mode") == 3
    assert consensus_vote([3, 3, 9, 9, 7, 5], "mode") == 3  # tie 3/9: lower median of {3, 9}
    assert consensus_vote([2, 4, 4, 6, 6, 8, 8], "mode") == 6  # tie 4/6/8: median 6


def test_votes_are_clipped_to_the_range_and_sample_is_capped() -> None:
    x = _blobs(6, seed=1)
    res = estimate_k(
        x, AutoKSpec(estimators=["silhouette", "xmeans"], k_min=2, k_max=4, sample_cap=100), seed=0
    )
    assert res.sample_size == 100
    assert set(res.votes) == {"silhouette", "xmeans"}
    assert all(2 <= v <= 4 for v in res.votes.values())


def test_stop_is_honoured() -> None:
    with pytest.raises(StopRequested):
        estimate_k(_blobs(3), AutoKSpec(), hooks=RunHooks(should_stop=lambda: True))


def test_digits_consensus_is_near_ten() -> None:
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    feats, _ = pca_features(x, 30)
    seen: list[float] = []
    res = estimate_k(
        feats, AutoKSpec(k_min=2, k_max=20), seed=0, hooks=RunHooks(on_progress=lambda f, *_: seen.append(f))
    )
    print("digits auto-K votes", res.votes, "consensus", res.k)
    assert set(res.votes) == {"silhouette", "eigengap", "xmeans", "gmeans", "dpmeans"}
    assert 8 <= res.k <= 12
    assert seen[-1] == 1.0 and len(seen) == 5


def _boxes(k: int, *, n_per: int = 300, long: float = 12.0, seed: int = 0) -> torch.Tensor:
    """k clusters, each uniform in a 12 x 1 x ... box (dim k + 1), centres 40 apart on orthogonal
    axes: well separated for silhouette, the kNN graph and DP-means, but neither spherical Gaussian
    (x-means' model) nor normal along the split axis (g-means' test), so both split without end."""
    g = torch.Generator().manual_seed(seed)
    dim = k + 1
    scale = torch.ones(dim)
    scale[0] = long
    centres = torch.eye(dim)[1:] * 40
    return torch.cat([c + (torch.rand(n_per, dim, generator=g) - 0.5) * scale for c in centres])


def test_votes_at_k_max_abstain_and_the_consensus_finds_the_truth() -> None:
    res = estimate_k(_boxes(4), AutoKSpec(k_max=8), seed=0)
    print("boxes", {n: (v.vote, v.censored) for n, v in res.estimators.items()}, res.consensus)
    for name in ("xmeans", "gmeans"):
        v = res.estimators[name]
        assert v.vote == 8 and v.censored == "upper" and "still splitting" in (v.reason or "")
        assert res.details[name]["stopped"] == "k_max, still splitting"
    assert {"xmeans", "gmeans"} <= set(res.consensus["abstained"]) and not res.consensus["fallback"]
    assert res.k == 4
    # The rule before censoring (median of all clipped votes; eigengap also ends at k_max on the
    # elongated boxes) chose the bound.
    assert res.consensus["legacy_k"] == 8
    out = res.as_dict()
    assert out["k"] == 4 and out["votes"]["xmeans"] == 8  # the existing keys keep their meaning
    assert out["estimators"]["gmeans"]["censored"] == "upper" and "rule" in out["consensus"]


def test_every_vote_censored_falls_back_to_the_bound_and_says_so() -> None:
    # 8 clusters, k_max 4: every estimator is cut off at the bound (DP-means at a fixed lambda
    # well under the squared distance between boxes opens all 8).
    spec = AutoKSpec(k_max=4, dpmeans_lambda=400.0)
    res = estimate_k(_boxes(8, n_per=60), spec, seed=0)
    print("all censored", {n: (v.raw, v.vote, v.censored) for n, v in res.estimators.items()})
    assert all(v.censored == "upper" for v in res.estimators.values())
    assert res.estimators["eigengap"].raw == 8 and res.estimators["dpmeans"].raw == 8
    assert res.consensus["fallback"] and res.consensus["used"] == []
    assert "widen" in res.consensus["rule"]
    assert res.k == 4


def test_censor_rules_at_each_bound() -> None:
    assert censor("silhouette", 10, {}, 2, 10).censored == "upper"
    assert censor("silhouette", 2, {}, 2, 10).censored is None  # 2: the smallest count a job takes
    assert censor("silhouette", 4, {}, 4, 10).censored == "lower"
    assert censor("eigengap", 6, {}, 2, 10).censored is None
    # x-means that reached k_max and then wanted no further split voted for k_max.
    assert censor("xmeans", 10, {"stopped": "converged"}, 2, 10).censored is None
    assert censor("gmeans", 10, {"stopped": "k_max, still splitting"}, 2, 10).censored == "upper"
    low = censor("dpmeans", 2, {"raw_k": 1}, 2, 10)  # one cluster opened: below the range
    assert (low.raw, low.vote, low.censored) == (1, 2, "lower")
    k, facts = decide([Vote("a", 3, 3), Vote("b", 9, 9, "upper", "x"), Vote("c", 5, 5)])
    assert k == 3 and facts["abstained"] == ["b"] and facts["legacy_k"] == 5


@pytest.mark.parametrize(("classes", "seed"), [((2, 3, 4, 5, 7), 1), ((0, 2, 3, 4, 6, 8), 2)])
def test_digits_subset_consensus_hits_the_class_count(classes: tuple[int, ...], seed: int) -> None:
    """PCA-50 of the pixels, as base.method kmeans: on these subsets the consensus hit the class
    count for estimator seeds 0, 1, 2 and 3 (silhouette and eigengap agree on it; x-means abstains
    at k_max, g-means votes 10-19, DP-means 2-4)."""
    d = load_digits()
    mask = np.isin(d.target, classes)
    x = torch.tensor(d.images[mask] / 16.0, dtype=torch.float32)[:, None]
    feats, _ = pca_features(x, 50)
    res = estimate_k(feats, AutoKSpec(), seed=seed)
    print(classes, res.votes, res.consensus["rule"], res.k)
    assert res.estimators["xmeans"].censored == "upper"
    assert res.k == len(classes)


def test_xmeans_bic_is_the_gaussian_log_likelihood_minus_the_penalty() -> None:
    from scipy.stats import multivariate_normal

    from core.clustering.autok.splitting import _bic

    x = _blobs(3, n_per=30, dim=4, seed=2)
    labels = torch.arange(x.shape[0]) // 30
    centres = torch.stack([x[labels == c].mean(0) for c in range(3)])
    r, m, k = x.shape[0], x.shape[1], 3
    var = float(((x - centres[labels]) ** 2).sum()) / (m * (r - k))
    loglik = sum(
        multivariate_normal(centres[c].double().numpy(), var * np.eye(m))
        .logpdf(x[labels == c].double().numpy())
        .sum()
        + 30 * np.log(30 / r)
        for c in range(k)
    )
    expected = loglik - ((k - 1) + m * k + 1) / 2 * np.log(r)
    assert _bic(x, labels, centres) == pytest.approx(expected, rel=1e-5)
