"""Tests of core.metrics against brute force and independent implementations (sklearn, torchmetrics)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torchmetrics.functional.classification import multiclass_calibration_error

from core.errors import CoreInputError
from core.metrics import (
    aligned_confusion,
    ari,
    assignment_agreement,
    clean_set_quality,
    cluster_accuracy,
    clustering_report,
    collapse_signs,
    expected_calibration_error,
    hungarian_match,
    many_to_one_accuracy,
    nmi,
)


def _brute_force_acc(y_true: np.ndarray, y_pred: np.ndarray, k: int, num_classes: int) -> float:
    """Best one-to-one cluster->class assignment by trying every injection of the smaller side."""
    best = 0
    if k <= num_classes:
        for perm in itertools.permutations(range(num_classes), k):
            best = max(best, sum(int(((y_pred == c) & (y_true == perm[c])).sum()) for c in range(k)))
    else:
        for perm in itertools.permutations(range(k), num_classes):
            best = max(
                best, sum(int(((y_pred == perm[j]) & (y_true == j)).sum()) for j in range(num_classes))
            )
    return best / len(y_true)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("k", "num_classes"), [(5, 5), (4, 6), (6, 4)])
def test_accuracy_equals_brute_force(seed: int, k: int, num_classes: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, 30)
    # Correlated predictions so that the optimum is not trivial.
    y_pred = np.where(rng.random(30) < 0.6, y_true % k, rng.integers(0, k, 30))
    assert cluster_accuracy(y_true, y_pred, k) == pytest.approx(
        _brute_force_acc(y_true, y_pred, k, num_classes)
    )


def test_accuracy_invariant_to_cluster_relabelling() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 5, 200))
    base = cluster_accuracy(y_true, y_pred, 5)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(5)
        assert cluster_accuracy(y_true, perm[y_pred], 5) == pytest.approx(base)
        assert nmi(y_true, perm[y_pred]) == pytest.approx(nmi(y_true, y_pred))
        assert ari(y_true, perm[y_pred]) == pytest.approx(ari(y_true, y_pred))


def test_hungarian_match_maps_permuted_clusters_back_and_marks_extra_clusters() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([2, 2, 0, 0, 1, 1, 3])  # cluster 3 is an extra
    mapping = hungarian_match(y_true, y_pred, 4)
    assert mapping.tolist() == [1, 2, 0, -1]
    assert cluster_accuracy(y_true, y_pred, 4) == pytest.approx(6 / 7)


def test_many_to_one_accuracy_on_over_clustering() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 3, 2])  # 4 clusters for 2 classes, each pure
    assert many_to_one_accuracy(y_true, y_pred, 4) == 1.0
    assert cluster_accuracy(y_true, y_pred, 4) == pytest.approx(5 / 8)


def test_aligned_confusion_puts_matched_counts_on_the_diagonal() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([2, 2, 0, 1, 1, 1, 3])
    conf = aligned_confusion(y_true, y_pred, 4)
    # Cluster 2 -> class 0, 1 -> 2, 0 -> 1, 3 unmatched (last column).
    assert conf == [[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 2, 1]]
    assert sum(conf[i][i] for i in range(3)) == round(cluster_accuracy(y_true, y_pred, 4) * 7)


@pytest.mark.parametrize("seed", range(8))
def test_nmi_and_ari_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y_true = rng.integers(0, int(rng.integers(1, 8)), n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, int(rng.integers(1, 9)), n))
    assert nmi(y_true, y_pred) == pytest.approx(normalized_mutual_info_score(y_true, y_pred), abs=1e-12)
    assert ari(y_true, y_pred) == pytest.approx(adjusted_rand_score(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 0, 0], [1, 1, 1]), ([0, 1, 2], [0, 0, 0]), ([0, 1, 2], [2, 1, 0]), ([0], [0]), ([0, 1], [5, 5])],
)
def test_nmi_and_ari_edge_cases_equal_sklearn(y_true: list[int], y_pred: list[int]) -> None:
    t, p = np.array(y_true), np.array(y_pred)
    assert nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p))
    assert ari(t, p) == pytest.approx(adjusted_rand_score(t, p))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_equals_torchmetrics_including_confidence_one(seed: int, n_bins: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, k = 500, 4
    logits = torch.randn(n, k, generator=g) * 3
    probs = torch.softmax(logits, dim=1)
    # Exactly one-hot rows give confidences of exactly 1.0; a few land on bin boundaries too.
    probs[:40] = torch.nn.functional.one_hot(torch.randint(0, k, (40,), generator=g), k).float()
    probs[40:45] = torch.tensor([0.6, 0.4, 0.0, 0.0])
    target = torch.randint(0, k, (n,), generator=g)
    expected = multiclass_calibration_error(probs, target, num_classes=k, n_bins=n_bins, norm="l1")
    conf, pred = probs.max(dim=1)
    ece, bins = expected_calibration_error(conf.numpy(), (pred == target).numpy(), n_bins=n_bins)
    assert ece == pytest.approx(float(expected), abs=1e-6)
    assert sum(b["count"] for b in bins) == n
    assert bins[-1]["lower"] == 1.0 and bins[-1]["count"] == 40  # the confidence-1.0 bucket
    recomputed = sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert ece == pytest.approx(recomputed)


def test_ece_hand_case() -> None:
    conf = np.array([0.1, 0.3, 0.35, 0.9, 0.95])
    correct = np.array([0, 1, 0, 1, 1])
    ece, bins = expected_calibration_error(conf, correct, n_bins=2)
    # Bin [0, .5): acc 1/3, conf 0.25; bin [.5, 1): acc 1, conf 0.925.
    assert ece == pytest.approx(3 / 5 * abs(1 / 3 - 0.25) + 2 / 5 * abs(1 - 0.925))
    assert [b["count"] for b in bins] == [3, 2]
    assert bins[0]["upper"] == 0.5


def test_ece_rejects_out_of_range() -> None:
    with pytest.raises(CoreInputError, match="confidences"):
        expected_calibration_error(np.array([1.2]), np.array([1]))


def test_clean_set_quality_hand_case() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pseudo = np.array([1, 1, 2, 2, 2, 0, 0, 0])  # clusters 1->0, 2->1, 0->2; samples 2 and 5 wrong
    clean = np.array([1, 0, 1, 1, 0, 0, 1, 1], dtype=bool)
    q = clean_set_quality(clean, pseudo, y_true, 3)
    # Correct: {0,1,3,4,6,7} (6). Clean: {0,2,3,6,7} (5), of which correct {0,3,6,7} (4).
    assert q["size"] == 5 and q["correct_total"] == 6
    assert q["precision"] == pytest.approx(4 / 5)
    assert q["recall"] == pytest.approx(4 / 6)
    assert q["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    empty = clean_set_quality(np.zeros(8, dtype=bool), pseudo, y_true, 3)
    assert empty["precision"] is None and empty["f1"] is None and empty["recall"] == 0.0


def test_clustering_report_with_labels() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 100)
    logits = np.eye(4)[np.where(rng.random(100) < 0.8, (y_true + 1) % 3, 3)] * 4 + rng.normal(size=(100, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    r = clustering_report(probs, y_true, num_clusters=4, ece_bins=10)
    json.dumps(r)  # plain Python types only
    pred = probs.argmax(1)
    assert r["acc"] == pytest.approx(cluster_accuracy(y_true, pred, 4))
    assert r["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, pred))
    assert r["ari"] == pytest.approx(adjusted_rand_score(y_true, pred))
    assert r["many_to_one_acc"] == pytest.approx(many_to_one_accuracy(y_true, pred, 4))
    mapped_correct = np.array(r["mapping"])[pred] == y_true
    t_ece = multiclass_calibration_error(
        torch.tensor(probs, dtype=torch.float32),
        torch.tensor(np.where(mapped_correct, pred, (pred + 1) % 4)),
        num_classes=4,
        n_bins=10,
    )
    assert r["ece"] == pytest.approx(float(t_ece), abs=1e-6)
    assert sum(r["cluster_sizes"]) == 100 and len(r["cluster_sizes"]) == 4
    assert sum(r["confidence_histogram"]["counts"]) == 100
    assert r["unavailable_reason"] is None


def test_clustering_report_without_labels() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    r = clustering_report(probs, None, num_clusters=2, ece_bins=5)
    json.dumps(r)
    for key in ("acc", "nmi", "ari", "ece", "confusion", "reliability", "many_to_one_acc"):
        assert r[key] is None
    assert r["unavailable_reason"] == "dataset has no labels"
    assert r["mean_confidence"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert r["cluster_sizes"] == [2, 1]
    assert r["confidence_histogram"]["counts"] == [0, 0, 1, 0, 2]


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(CoreInputError, match="y_pred"):
        cluster_accuracy(np.array([0, 1]), np.array([0, 5]), 2)
    with pytest.raises(CoreInputError, match="probs"):
        clustering_report(np.ones((3, 2)) / 2, None, num_clusters=3)


def test_many_to_one_reported_whatever_k() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 0, 0, 1, 2, 2]] * 0.8 + 0.2 / 3
    r = clustering_report(probs, y_true, num_clusters=3)
    # Cluster 0 = {0, 0, 1}: majority class 0 -> 2 right; clusters 1, 2 all right: 5 of 6.
    assert r["many_to_one_acc"] == pytest.approx(5 / 6) and r["acc"] == pytest.approx(5 / 6)


def _onehot(pred: np.ndarray, k: int, conf: float = 0.9) -> np.ndarray:
    return np.eye(k)[pred] * (conf - (1 - conf) / (k - 1)) + (1 - conf) / (k - 1)


def test_collapse_signs_quiet_on_a_relabelled_refinement() -> None:
    base = np.repeat(np.arange(4), 25)
    refined = (base + 1) % 4  # renumbered, same partition
    refined[:10] = 3  # 10 of 100 samples move: a normal refinement
    c = collapse_signs(base, _onehot(refined, 4), num_clusters=4)
    assert c["suspected"] is False and c["fired"] == []
    assert c["figures"]["agreement"] == pytest.approx(0.9)
    assert c["figures"]["normalised_confidence"] == pytest.approx((0.9 - 0.25) / 0.75)


def test_each_collapse_sign_fires_on_its_case() -> None:
    base = np.repeat(np.arange(4), 25)
    one_cluster = collapse_signs(base, _onehot(np.zeros(100, dtype=int), 4), num_clusters=4)
    assert {f["sign"] for f in one_cluster["fired"]} == {
        "agreement",
        "new_empty_clusters",
        "merged_clusters",
        "size_entropy_ratio",
    }
    assert (
        one_cluster["figures"]["new_empty_clusters"] == 3
        and one_cluster["figures"]["size_entropy_ratio"] == 0.0
    )
    merged = base.copy()
    merged[merged == 1] = 0  # clusters 0 and 1 merge, cluster 1 empties; sizes 50/25/25
    m = collapse_signs(base, _onehot(merged, 4), num_clusters=4)
    assert {f["sign"] for f in m["fired"]} == {"new_empty_clusters", "merged_clusters", "size_entropy_ratio"}
    h = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert m["figures"]["size_entropy_ratio"] == pytest.approx(h / np.log(4))  # 0.75 < 0.8
    assert m["figures"]["agreement"] == pytest.approx(0.75)
    uniform = collapse_signs(base, np.full((100, 4), 0.25) + np.eye(4)[base] * 0.01, num_clusters=4)
    assert [f["sign"] for f in uniform["fired"]] == ["normalised_confidence"]
    assert all(f["message"] for f in uniform["fired"])


def test_assignment_agreement_is_permutation_invariant() -> None:
    base = np.array([0, 0, 1, 1, 2, 2])
    a = assignment_agreement(base, np.array([2, 2, 0, 0, 1, 0]), 3)
    assert a["aligned"] == pytest.approx(5 / 6) and a["raw"] == 0.0 and a["mapping"] == [1, 2, 0]
