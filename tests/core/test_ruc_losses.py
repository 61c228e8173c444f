"""RUC's pure steps on tiny tensors: sharpening, label smoothing, MixMatch, schedules, refurbishing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.ruc.losses import (
    co_refine,
    cosine_lr,
    guess_labels,
    minmax_normalise,
    mix,
    mixmatch_lambda,
    probs_squared_error,
    sharpen,
    smooth_labels,
    soft_cross_entropy,
)
from core.ruc.refurbish import apply_refurbish, refurbish_candidates
from core.ruc.schedules import TAU2_CAP, resolve_schedule
from core.spec import RefineSpec


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim=1)


def test_sharpen_sums_to_one_and_lowers_entropy() -> None:
    p = torch.softmax(torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    s = sharpen(p, 0.5)
    assert torch.allclose(s.sum(dim=1), torch.ones(16), atol=1e-6)
    assert (_entropy(s) < _entropy(p)).all()
    assert torch.equal(s.argmax(dim=1), p.argmax(dim=1))
    # T = 0.5 squares then renormalises: [0.6, 0.4] -> [0.36, 0.16] / 0.52
    assert torch.allclose(
        sharpen(torch.tensor([[0.6, 0.4]]), 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52]])
    )
    assert torch.allclose(sharpen(p, 1.0), p, atol=1e-6)


def test_label_smoothing_eq8_exact_values() -> None:
    y = smooth_labels(torch.tensor([0, 2]), 5, 0.5)
    expected = torch.tensor([[0.5, 0.125, 0.125, 0.125, 0.125], [0.125, 0.125, 0.5, 0.125, 0.125]])
    assert torch.allclose(y, expected)
    assert torch.allclose(y.sum(dim=1), torch.ones(2))
    assert torch.equal(smooth_labels(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_co_refine_interpolates_before_sharpening() -> None:
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    partner = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = co_refine(onehot, partner, torch.tensor([0.0, 0.25]), 1.0)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.75, 0.25]]))
    sharp = co_refine(onehot, partner, torch.tensor([0.25, 0.25]), 0.5)
    assert torch.allclose(sharp[0], torch.tensor([0.9, 0.1]))  # 0.75^2, 0.25^2 renormalised


def test_guess_labels_averages_all_views_then_sharpens() -> None:
    probs = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]], [[0.6, 0.4]], [[0.6, 0.4]]])  # (V=4, B=1, K=2)
    assert torch.allclose(guess_labels(probs, 1.0), torch.tensor([[0.6, 0.4]]))
    assert torch.allclose(guess_labels(probs, 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))


def test_mixmatch_lambda_at_least_half_and_mixing_convex() -> None:
    rng = np.random.default_rng(0)
    lams = [mixmatch_lambda(4.0, rng) for _ in range(200)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    assert len(set(lams)) > 100
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 4, 4, generator=g)
    t = torch.softmax(torch.randn(6, 4, generator=g), dim=1)
    perm = torch.randperm(6, generator=g)
    mx, mt = mix(x, t, 0.7, perm)
    assert torch.allclose(mx, 0.7 * x + 0.3 * x[perm], atol=1e-6)
    assert torch.allclose(mt, 0.7 * t + 0.3 * t[perm], atol=1e-6)
    assert torch.allclose(mt.sum(dim=1), torch.ones(6), atol=1e-6)
    lo = torch.minimum(x, x[perm]) - 1e-6
    hi = torch.maximum(x, x[perm]) + 1e-6
    assert ((mx >= lo) & (mx <= hi)).all()


def test_soft_cross_entropy_and_squared_error() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ce = soft_cross_entropy(logits, onehot)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), reduction="none")
    assert torch.allclose(ce, ref)
    se = probs_squared_error(logits, onehot)
    p = torch.softmax(logits, dim=1)
    assert torch.allclose(se, ((p - onehot) ** 2).mean(dim=1))


def test_minmax_normalise() -> None:
    v = torch.tensor([0.2, 0.6, 1.0, 0.4])
    assert torch.allclose(minmax_normalise(v), torch.tensor([0.0, 0.5, 1.0, 0.25]))
    assert torch.equal(minmax_normalise(torch.full((3,), 0.7)), torch.zeros(3))


def test_schedules_at_the_papers_200_epochs_match_a2() -> None:
    sched = resolve_schedule(RefineSpec(epochs=200), num_clusters=10)
    assert [sched.tau2_at(e) for e in (0, 39, 40, 80, 199)] == pytest.approx([0.9, 0.9, 0.92, 0.94, 0.98])
    assert [sched.lambda_u_at(e) / 25 for e in (0, 10, 20, 100, 199)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.5, 0.995]
    )
    assert sched.label_smoothing == 0.2  # the K-aware default (A.2's 0.5 assumes 200 epochs)
    long = resolve_schedule(RefineSpec(epochs=200, refurbish_every=1, refurbish_step=0.02), num_clusters=10)
    assert long.tau2_at(10_000) == TAU2_CAP


@pytest.mark.parametrize("epochs", [5, 10, 30, 77])
def test_schedules_keep_their_proportions_whatever_the_epoch_count(epochs: int) -> None:
    """lambda_u reaches its full weight near the end and tau2 its 4th step in the last fifth."""
    sched = resolve_schedule(RefineSpec(epochs=epochs), num_clusters=10)
    assert sched.lambda_u_at(epochs - 1) == pytest.approx(25 * max((epochs - 1) / epochs, 0.1))
    assert sched.tau2_at(epochs - 1) == pytest.approx(0.98)
    assert sched.tau2_at(0) == pytest.approx(0.9)
    first_fifth = [e for e in range(epochs) if e < epochs / 5]
    assert all(sched.tau2_at(e) == pytest.approx(0.9) for e in first_fifth)


def test_absolute_schedule_overrides_win_and_are_reported() -> None:
    sched = resolve_schedule(
        RefineSpec(epochs=30, lambda_u_rampup_epochs=200, refurbish_every=40), num_clusters=10
    )
    assert sched.lambda_u_at(29) == pytest.approx(25 * 29 / 200)
    assert sched.tau2_at(29) == pytest.approx(0.9)
    assert sched.report()["lambda_u_rampup_source"] == "spec"
    assert sched.report()["refurbish_every_source"] == "spec"


@pytest.mark.parametrize("k", [2, 3, 5, 10, 100])
def test_default_label_smoothing_keeps_the_pseudo_label_largest(k: int) -> None:
    eps = resolve_schedule(RefineSpec(), num_clusters=k).label_smoothing
    target = smooth_labels(torch.tensor([0]), k, eps)[0]
    assert target[0] > target[1:].max() * 8.99
    assert (eps == 0.2) == (k >= 4)


def test_label_smoothing_at_or_over_the_bound_is_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    from core.errors import CoreInputError
    from core.spec import JobSpec

    with pytest.raises(ValidationError) as err:
        JobSpec(dataset_id="d", num_clusters=2, refine={"label_smoothing": 0.5})
    assert err.value.errors()[0]["loc"] == ("refine", "label_smoothing")
    assert "(K-1)/K" in str(err.value)
    with pytest.raises(ValidationError):
        JobSpec(dataset_id="d", num_clusters=3, refine={"label_smoothing": 0.7})
    JobSpec(dataset_id="d", num_clusters=3, refine={"label_smoothing": 0.6})
    # auto-K: K is known only at run time, where the same bound applies
    with pytest.raises(CoreInputError, match="refine.label_smoothing"):
        resolve_schedule(RefineSpec(label_smoothing=0.6), num_clusters=2)


def test_cosine_lr() -> None:
    assert cosine_lr(0.01, 0, 200) == pytest.approx(0.01)
    assert cosine_lr(0.01, 100, 200) == pytest.approx(0.005)
    assert cosine_lr(0.01, 50, 200) == pytest.approx(0.005 * (1 + math.cos(math.pi / 4)))


def test_refurbish_takes_more_confident_network_above_tau2() -> None:
    probs = torch.tensor(
        [
            # net 1
            [[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.2, 0.1, 0.7], [0.0, 0.91, 0.09]],
            # net 2
            [[0.10, 0.00, 0.9], [0.0, 0.0, 1.0], [0.0, 0.0, 0.8], [0.0, 0.05, 0.95]],
        ]
    )  # (V=2, N=4, K=3)
    accept, labels = refurbish_candidates(probs, 0.9)
    assert accept.tolist() == [True, True, False, True]
    # sample 3: net 2 (0.95) beats net 1 (0.91), so its class 2 wins, not net 1's class 1
    assert labels[accept].tolist() == [0, 2, 2]

    clean = torch.tensor([True, False, False, False, False, True])
    pseudo = torch.tensor([1, 1, 1, 1, 1, 0])
    indices = torch.tensor([1, 2, 3, 4])
    added = apply_refurbish(clean, pseudo, indices, accept, labels)
    assert added == 3
    assert clean.tolist() == [True, True, True, False, True, True]
    assert pseudo.tolist() == [1, 0, 2, 1, 2, 0]
    # a second call adds nothing: those samples are clean already
    assert apply_refurbish(clean, pseudo, indices, accept, labels) == 0


def test_refurbish_threshold_is_strict() -> None:
    accept, _ = refurbish_candidates(torch.tensor([[[0.9, 0.1]]]), 0.9)
    assert not accept.any()
