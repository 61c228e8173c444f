"""train_ruc end to end on tiny synthetic images (8x8, small_cnn): switches, determinism, resume, guards."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import CoreInputError, StopRequested
from core.hooks import RunHooks
from core.models import ClusteringModel, build_backbone
from core.ruc import PerfOptions, RucOutput, load_state, predict_ensemble, train_ruc
from core.ruc.networks import build_net as _build_net
from core.spec import RefineSpec

N, K = 240, 3


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, K, (N,), generator=g)
    # Each class has its own colour; noise on top keeps the task from being trivial.
    colours = torch.tensor([[200.0, 40.0, 40.0], [40.0, 200.0, 40.0], [40.0, 40.0, 200.0]])
    imgs = colours[truth][:, None, None, :] + 60.0 * torch.randn(N, 8, 8, 3, generator=g)
    pseudo = truth.clone()
    noisy = torch.rand(N, generator=g) < 0.2
    pseudo[noisy] = torch.randint(0, K, (int(noisy.sum()),), generator=g)
    clean = (torch.rand(N, generator=g) < 0.6) & ~noisy
    torch.manual_seed(0)
    backbone, dim = build_backbone("small_cnn", in_channels=3)
    base = ClusteringModel(backbone, dim, K)
    return {
        "images": imgs.clamp(0, 255).to(torch.uint8),
        "truth": truth,
        "pseudo": pseudo,
        "clean": clean,
        "base": base,
    }


def _spec(**kw: Any) -> RefineSpec:
    opts: dict[str, Any] = {"epochs": 2, "batch_size": 40, "lambda_u_rampup_epochs": 2}
    opts.update(kw)
    return RefineSpec(**opts)


def _run(
    data: dict[str, Any], spec: RefineSpec, *, seed: int = 0, clean: torch.Tensor | None = None, **kw: Any
):
    return train_ruc(
        data["base"],
        data["images"],
        data["pseudo"],
        data["clean"] if clean is None else clean,
        spec,
        num_clusters=K,
        seed=seed,
        device="cpu",
        **kw,
    )


def _check_output(out: RucOutput) -> None:
    assert out.probs.shape == (N, K)
    assert torch.isfinite(out.probs).all()
    assert torch.allclose(out.probs.sum(dim=1), torch.ones(N), atol=1e-5)
    for m in out.per_epoch:
        for key in ("loss_xs", "loss_x", "loss_u", "mean_confidence"):
            assert m[key] is None or math.isfinite(m[key]), (key, m)  # None: the term is switched off


def test_full_ruc_learns_and_reports(data: dict[str, Any]) -> None:
    epochs: list[dict[str, Any]] = []
    progress: list[float] = []
    out = _run(
        data,
        _spec(epochs=3, lambda_u_rampup_epochs=3),
        hooks=RunHooks(on_epoch=epochs.append, on_progress=lambda f, e, t: progress.append(f)),
    )
    _check_output(out)
    assert len(out.models) == 2
    assert epochs == out.per_epoch and [m["epoch"] for m in epochs] == [1, 2, 3]
    assert progress == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    expected_keys = {"epoch", "loss_xs", "loss_x", "loss_u", "lambda_u_eff", "tau2", "clean_size"}
    assert expected_keys | {"refurbished", "lr", "seconds", "mean_confidence"} <= set(epochs[0])
    assert [m["lambda_u_eff"] for m in epochs] == pytest.approx([2.5, 25 / 3, 50 / 3])
    assert epochs[0]["lr"] == pytest.approx(0.01) and epochs[2]["lr"] < epochs[1]["lr"] < 0.01
    assert all(m["loss_x"] > 0 and m["loss_u"] > 0 for m in epochs)
    # RUC corrects its noisy input labels: the refined clustering beats them on the hidden truth
    acc = (out.probs.argmax(dim=1) == data["truth"]).float().mean().item()
    given = (data["pseudo"] == data["truth"]).float().mean().item()
    assert acc > given + 0.05, (acc, given)
    assert out.models[0].cluster_head[0].weight.data_ptr() != out.models[1].cluster_head[0].weight.data_ptr()
    assert not torch.equal(out.models[0].cluster_head[0].weight, out.models[1].cluster_head[0].weight)


def test_same_seed_same_result_other_seed_differs(data: dict[str, Any]) -> None:
    a = _run(data, _spec())
    b = _run(data, _spec())
    c = _run(data, _spec(), seed=1)
    assert torch.equal(a.probs, b.probs)
    assert torch.equal(a.clean_mask, b.clean_mask)
    assert not torch.allclose(a.probs, c.probs)


def test_label_smoothing_lowers_confidence(data: dict[str, Any]) -> None:
    # The key ablation: smoothed targets (eps=0.5) keep the networks from becoming overconfident.
    hard = _run(data, _spec(epochs=3, label_smoothing=0.0))
    soft = _run(data, _spec(epochs=3, label_smoothing=0.5))
    conf_hard = hard.probs.max(dim=1).values.mean().item()
    conf_soft = soft.probs.max(dim=1).values.mean().item()
    assert conf_hard > conf_soft + 0.02


def test_refurbish_switch(data: dict[str, Any]) -> None:
    spec = {"epochs": 3, "refurbish_threshold": 0.5, "label_smoothing": 0.0}
    grows = _run(data, _spec(**spec))
    fixed = _run(data, _spec(refurbish=False, **spec))
    start = int(data["clean"].sum())
    assert [m["clean_size"] for m in fixed.per_epoch] == [start] * 3
    assert torch.equal(fixed.clean_mask, data["clean"])
    sizes = [m["clean_size"] for m in grows.per_epoch]
    assert sizes[-1] > start and sizes == sorted(sizes)
    assert sum(m["refurbished"] for m in grows.per_epoch) == sizes[-1] - start
    # refurbished samples carry the ensemble's label, which beats the noisy pseudo-labels they had
    new = grows.clean_mask & ~data["clean"]
    assert (grows.pseudo_labels[new] == data["truth"][new]).float().mean() > 0.8


def test_batch_refurbish_mode_runs_with_fixed_threshold(data: dict[str, Any]) -> None:
    out = _run(data, _spec(refurbish_mode="batch", label_smoothing=0.0))
    _check_output(out)
    assert all(m["tau2"] == 0.99 for m in out.per_epoch)
    assert out.per_epoch[-1]["clean_size"] >= int(data["clean"].sum())


def test_mixmatch_off_trains_only_on_strong_clean_views(data: dict[str, Any]) -> None:
    out = _run(data, _spec(mixmatch=False))
    _check_output(out)
    assert all(m["loss_x"] is None and m["loss_u"] is None and m["loss_xs"] > 0 for m in out.per_epoch)


def test_single_network_without_co_training(data: dict[str, Any]) -> None:
    out = _run(data, _spec(co_training=False))
    _check_output(out)
    assert len(out.models) == 1
    assert all(m["loss_u"] > 0 for m in out.per_epoch)


def test_empty_unclean_set_gives_zero_unlabeled_loss(data: dict[str, Any]) -> None:
    out = _run(data, _spec(), clean=torch.ones(N, dtype=torch.bool))
    _check_output(out)
    assert all(m["loss_u"] == 0 and m["loss_x"] > 0 for m in out.per_epoch)


def test_empty_clean_set_is_guarded(data: dict[str, Any]) -> None:
    events: list[tuple[str, str]] = []
    out = _run(
        data,
        _spec(fallback_fraction=0.1),
        clean=torch.zeros(N, dtype=torch.bool),
        hooks=RunHooks(on_event=lambda lvl, msg: events.append((lvl, msg))),
    )
    _check_output(out)
    assert any(lvl == "warning" and "clean" in msg for lvl, msg in events)
    members = torch.bincount(data["pseudo"], minlength=K)
    expected = sum(math.ceil(0.1 * int(m)) for m in members)
    assert out.per_epoch[0]["clean_size"] >= expected
    assert torch.bincount(data["pseudo"][out.clean_mask], minlength=K).min() >= 1


def test_stop_after_epoch_then_resume_equals_uninterrupted(data: dict[str, Any], tmp_path: Path) -> None:
    spec = _spec(epochs=3, lambda_u_rampup_epochs=3, refurbish_threshold=0.5)
    straight = _run(data, spec)
    ckpt = tmp_path / "ruc.pt"
    seen: list[dict[str, Any]] = []
    with pytest.raises(StopRequested):
        _run(
            data,
            spec,
            checkpoint_path=ckpt,
            hooks=RunHooks(on_epoch=seen.append, should_stop=lambda: len(seen) >= 1),
        )
    assert ckpt.exists() and load_state(ckpt).epoch == 1 and len(seen) == 1
    events: list[str] = []
    resumed = _run(
        data,
        spec,
        checkpoint_path=ckpt,
        resume=True,
        hooks=RunHooks(on_event=lambda _lvl, m: events.append(m)),
    )
    assert any("resuming after epoch 1" in m for m in events)
    assert [m["epoch"] for m in resumed.per_epoch] == [1, 2, 3]
    assert torch.allclose(resumed.probs, straight.probs, atol=1e-6)
    assert torch.equal(resumed.clean_mask, straight.clean_mask)
    assert torch.equal(resumed.pseudo_labels, straight.pseudo_labels)
    assert load_state(ckpt).epoch == 3


def test_stop_mid_epoch_leaves_last_completed_checkpoint(data: dict[str, Any], tmp_path: Path) -> None:
    ckpt = tmp_path / "ruc.pt"
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1  # the pre-training check passes; the first in-loop check stops

    # batch 10 -> 14+ steps per pass, so a mid-pass check (every 10 steps) happens
    with pytest.raises(StopRequested, match="step 10"):
        _run(data, _spec(batch_size=10), checkpoint_path=ckpt, hooks=RunHooks(should_stop=stop))
    state = load_state(ckpt)
    assert state.epoch == 0 and state.per_epoch == []


def test_checkpoint_of_other_inputs_is_not_resumed(data: dict[str, Any], tmp_path: Path) -> None:
    ckpt = tmp_path / "ruc.pt"
    _run(data, _spec(epochs=1), seed=5, checkpoint_path=ckpt)
    events: list[str] = []
    out = _run(
        data, _spec(epochs=1), checkpoint_path=ckpt, hooks=RunHooks(on_event=lambda _lvl, m: events.append(m))
    )
    fresh = _run(data, _spec(epochs=1))
    assert any("other inputs" in m for m in events)
    assert torch.equal(out.probs, fresh.probs)


def test_bad_inputs_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(CoreInputError, match="pseudo_labels"):
        train_ruc(
            data["base"],
            data["images"],
            data["pseudo"] + K,
            data["clean"],
            _spec(),
            num_clusters=K,
            seed=0,
            device="cpu",
        )
    with pytest.raises(CoreInputError, match="num_clusters"):
        train_ruc(
            data["base"],
            data["images"],
            data["pseudo"],
            data["clean"],
            _spec(),
            num_clusters=K + 1,
            seed=0,
            device="cpu",
        )


def test_network_construction(data: dict[str, Any]) -> None:
    base = data["base"]
    fresh = _build_net(base, _spec(), 0, seed=0, in_channels=3, num_clusters=K)
    fresh2 = _build_net(base, _spec(), 1, seed=0, in_channels=3, num_clusters=K)
    kept = _build_net(base, _spec(reinit_head=False), 0, seed=0, in_channels=3, num_clusters=K)
    head = base.cluster_head[0]
    assert torch.equal(kept.cluster_head[0].weight, head.weight)
    assert not torch.equal(fresh.cluster_head[0].weight, head.weight)
    assert not torch.equal(fresh.cluster_head[0].weight, fresh2.cluster_head[0].weight)
    for a, b in zip(fresh.backbone.parameters(), base.backbone.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    other = _build_net(base, _spec(backbone="resnet18_cifar"), 0, seed=0, in_channels=3, num_clusters=K)
    assert other.backbone_name == "resnet18_cifar"
    assert other(torch.rand(2, 3, 8, 8)).shape == (2, K)


def test_float32_path_is_deterministic_and_close_to_default(data: dict[str, Any]) -> None:
    fp32 = PerfOptions(channels_last=False, autocast_dtype=torch.float32)
    a = _run(data, _spec(), perf=fp32)
    b = _run(data, _spec(), perf=fp32)
    _check_output(a)
    assert torch.equal(a.probs, b.probs)
    default = _run(data, _spec())
    # bf16 autocast (where the CPU has it) changes rounding, not what is learned
    agree = (default.probs.argmax(dim=1) == a.probs.argmax(dim=1)).float().mean().item()
    assert agree > 0.9


def test_predict_ensemble_is_mean_of_softmaxes(data: dict[str, Any]) -> None:
    nets = [_build_net(data["base"], _spec(), i, seed=0, in_channels=3, num_clusters=K) for i in range(2)]
    images = data["images"][:50]
    probs = predict_ensemble(nets, images, 16)
    x = images.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = (torch.softmax(nets[0].eval()(x), 1) + torch.softmax(nets[1].eval()(x), 1)) / 2
    assert probs.shape == (50, K)
    assert torch.allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize("co_training", [True, False])
def test_prediction_tables_are_the_final_networks_predictions(
    data: dict[str, Any], tmp_path: Path, co_training: bool
) -> None:
    """The tables behind co-refinement, refurbishing and the output are each network's current f(x)."""
    fp32 = PerfOptions(channels_last=False, autocast_dtype=torch.float32)
    ckpt = tmp_path / "ruc.pt"
    out = _run(data, _spec(co_training=co_training), perf=fp32, checkpoint_path=ckpt)
    fresh = predict_ensemble(out.models, data["images"], 64)
    assert torch.allclose(out.probs, fresh, atol=1e-5)
    state = load_state(ckpt)
    assert state.table.shape == (len(out.models), N, K) and bool(state.ready.all())
    for table, net in zip(state.table, out.models, strict=True):
        assert torch.allclose(table, predict_ensemble([net], data["images"], 64), atol=1e-5)


def test_each_loss_switch_drops_its_term(data: dict[str, Any]) -> None:
    no_strong = _run(data, _spec(strong_loss=False))
    no_unlabeled = _run(data, _spec(unlabeled_loss=False))
    _check_output(no_strong)
    _check_output(no_unlabeled)
    assert all(m["loss_xs"] is None and m["loss_x"] > 0 and m["loss_u"] > 0 for m in no_strong.per_epoch)
    assert all(m["loss_u"] is None and m["lambda_u_eff"] == 0 for m in no_unlabeled.per_epoch)
    full = _run(data, _spec())
    assert not torch.allclose(full.probs, no_strong.probs)
    assert not torch.allclose(full.probs, no_unlabeled.probs)
    with pytest.raises(ValueError, match="strong_loss"):
        RefineSpec(strong_loss=False, mixmatch=False)


def test_divergence_stops_with_epoch_step_and_the_setting_to_change(data: dict[str, Any]) -> None:
    import copy

    from core.errors import TrainingDiverged

    poisoned = copy.deepcopy(data["base"])
    with torch.no_grad():
        poisoned.cluster_head[0].weight.fill_(float("inf"))  # its logits are inf - inf: NaN losses
    with pytest.raises(TrainingDiverged) as err:
        _run({**data, "base": poisoned}, _spec(reinit_head=False))
    message = str(err.value)
    assert message == "training diverged at epoch 1, step 1 (loss nan); lower refine.lr", message
    assert not isinstance(err.value, CoreInputError)  # not the client's data: no "bad input" message


def test_labels_give_per_epoch_clean_set_and_refurbishing_quality(data: dict[str, Any]) -> None:
    spec = _spec(epochs=3, refurbish_threshold=0.5, label_smoothing=0.0)
    out = _run(data, spec, labels=data["truth"].numpy())
    blind = _run(data, spec)
    assert torch.equal(out.probs, blind.probs)  # labels are read for reporting only
    last = out.per_epoch[-1]
    for key in ("clean_precision", "clean_recall", "clean_f1", "refurbished_precision", "refurbished_recall"):
        assert 0 <= last[key] <= 1, key
    # refurbished samples carry mostly correct labels, and refurbishing raised the clean set's recall
    assert last["refurbished_precision"] > 0.8
    assert last["clean_recall"] > out.per_epoch[0]["clean_recall"] or out.per_epoch[0]["refurbished"] > 0
    assert "clean_precision" not in blind.per_epoch[-1]
    assert out.effective["label_smoothing"] == 0.0 and out.effective["refurbish_every"] == pytest.approx(
        3 / 5
    )
