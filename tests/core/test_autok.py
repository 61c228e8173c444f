"""Auto-K: each estimator on blobs with a known count, the consensus rules, and digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import silhouette_score as sk_silhouette

from core.clustering.autok import (
    anderson_darling,
    consensus_vote,
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
