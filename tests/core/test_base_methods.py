"""Base clustering methods of the registry on scikit-learn's digits (1797 8x8 images, 10 classes).

Budgets are small (the suite runs on 2 shared CPU cores), so the bars are "far above chance
(0.1)", and SCAN is compared with k-means on the same fixed embedding.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from base_digits import digits_with_pca, hungarian_acc

from core.clustering.base import embed_images, run_base
from core.clustering.deep_clustering import (
    _dcn_centroid_step,
    reset_adam_moments,
    soft_reset,
    student_t,
    target_distribution,
)
from core.clustering.kmeans import kmeans
from core.clustering.methods import METHODS, MethodInputs, get_method, run_method
from core.clustering.pretext import train_simclr
from core.clustering.scan_head import scan_loss
from core.datasets import ImageDataset
from core.errors import CoreInputError, StopRequested
from core.hooks import RunHooks
from core.models import load_embedding_model, save_safetensors
from core.models.autoencoder import MlpAutoencoder
from core.spec import BaseSpec, JobSpec, PretextSpec


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(images01 (N, 1, 8, 8), PCA-30 features (N, 30), labels (N,))."""
    return digits_with_pca()


# ------------------------------------------------------------------ registry and small pieces


def test_registry_resolves_every_method_and_rejects_unknown() -> None:
    assert set(METHODS) == {"scan", "dec", "idec", "dcn", "gcc", "and"}
    for name in METHODS:
        assert callable(get_method(name))
    with pytest.raises(CoreInputError) as e:
        get_method("spectral")
    assert e.value.field == "base.method"


def test_scan_loss_rewards_agreeing_confident_neighbours() -> None:
    k = 4
    confident = torch.eye(k).repeat(2, 1) * 20  # (8, 4) two samples per cluster, balanced
    total, cons, ent = scan_loss(confident, confident, entropy_weight=5.0)
    assert float(cons) < 1e-6 and float(ent) == pytest.approx(np.log(k), abs=1e-5)
    disagree = confident.roll(1, dims=1)
    assert float(scan_loss(confident, disagree, 5.0)[1]) > 10  # neighbours in other clusters
    collapsed = torch.zeros(8, k)
    collapsed[:, 0] = 20
    assert float(scan_loss(collapsed, collapsed, 5.0)[0]) > float(total) + 5 * np.log(k) - 1e-4


def test_dec_target_distribution_sharpens_and_normalises() -> None:
    q = student_t(torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]]), torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
    assert torch.allclose(q.sum(1), torch.ones(3))
    p = target_distribution(q)
    assert torch.allclose(p.sum(1), torch.ones(3))
    assert float(p[0, 0]) > float(q[0, 0]) and float(p[2, 1]) > float(q[2, 1])


def test_soft_reset_interpolates_towards_a_fresh_init_and_spares_the_embedding_layer() -> None:
    ae = MlpAutoencoder(6, [5, 4], 3)  # encoder Linear layers at indices 0, 2, 4 (4: embedding)
    before = copy.deepcopy(ae.encoder.state_dict())
    assert soft_reset(ae.encoder, 1.0, torch.Generator().manual_seed(0)) == ["0", "2"]
    assert all(torch.equal(before[k], v) for k, v in ae.encoder.state_dict().items())
    with torch.no_grad():
        for p in ae.encoder.parameters():
            p.fill_(10.0)
    soft_reset(ae.encoder, 0.0, torch.Generator().manual_seed(0))  # alpha 0: a pure fresh init
    assert float(ae.encoder[0].weight.detach().abs().max()) <= 6**-0.5 + 1e-6
    assert float(ae.encoder[2].weight.detach().abs().max()) <= 5**-0.5 + 1e-6
    assert torch.equal(ae.encoder[4].weight.detach(), torch.full((3, 4), 10.0))  # embedding layer kept
    soft_reset(ae.encoder, 0.5, torch.Generator().manual_seed(0))
    assert float(ae.encoder[0].weight.detach().abs().max()) <= 6**-0.5 + 1e-6  # convex mix of two inits
    names = soft_reset(ae.encoder, 0.5, torch.Generator().manual_seed(0), reset_embedding=True)
    assert names == ["0", "2", "4"] and float(ae.encoder[4].weight.detach().abs().max()) <= 5 + 0.5 * 4**-0.5


def test_momentum_reset_zeroes_adam_moments_and_keeps_the_step() -> None:
    mu = torch.nn.Parameter(torch.randn(4, 2))
    opt = torch.optim.Adam([mu], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        mu.pow(2).sum().backward()
        opt.step()
    assert float(opt.state[mu]["exp_avg"].abs().sum()) > 0
    reset_adam_moments(opt, mu)
    st = opt.state[mu]
    assert float(st["exp_avg"].abs().sum()) == 0 and float(st["exp_avg_sq"].abs().sum()) == 0
    assert int(st["step"]) == 3


def test_dcn_batched_centroid_step_equals_sequential_updates() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 2, generator=g)
    z = torch.randn(7, 2, generator=g)
    s = torch.tensor([0, 2, 0, 0, 2, 1, 0])
    counts = torch.tensor([1.0, 4.0, 2.0])
    seq_mu, seq_c = mu.clone(), counts.clone()
    for zi, si in zip(z, s.tolist(), strict=True):
        seq_c[si] += 1
        seq_mu[si] -= (seq_mu[si] - zi) / seq_c[si]
    p = torch.nn.Parameter(mu.clone())
    _dcn_centroid_step(p, counts, z, s)
    assert torch.allclose(p.data, seq_mu, atol=1e-6) and torch.equal(counts, seq_c)


# ------------------------------------------------------------------ SCAN


def test_scan_head_beats_kmeans_on_the_same_embedding(digits) -> None:
    x, feats, y = digits
    km_acc = hungarian_acc(y, kmeans(feats, 10, restarts=10, seed=0).labels)
    epochs: list[dict] = []
    res = run_method(
        "scan",
        MethodInputs(x, feats),
        BaseSpec(method="scan"),
        num_clusters=10,
        seed=0,
        hooks=RunHooks(on_epoch=epochs.append),
    )
    acc = hungarian_acc(y, res.pseudo_labels)
    print(f"SCAN on PCA-30 {acc:.3f} vs k-means {km_acc:.3f}; {res.info['self_label']}")
    assert acc > km_acc
    assert torch.allclose(res.probs.sum(1), torch.ones(len(y)), atol=1e-5)
    assert torch.equal(res.probs.argmax(1), res.pseudo_labels)
    assert res.embedding.shape == feats.shape
    assert [r["epoch"] for r in epochs if r["phase"] == "base:scan"] == list(range(1, 61))


def test_stop_request_raises(digits) -> None:
    x, feats, _ = digits
    for name in ("scan", "dec"):
        with pytest.raises(StopRequested):
            run_method(
                name,
                MethodInputs(x, feats),
                BaseSpec(method=name),
                num_clusters=10,
                seed=0,
                hooks=RunHooks(should_stop=lambda: True),
            )


# ------------------------------------------------------------------ GCC and AND


def test_gcc_far_above_chance(digits) -> None:
    x, feats, y = digits
    res = run_method(
        "gcc", MethodInputs(x, feats), BaseSpec(method="gcc", gcc={"epochs": 15}), num_clusters=10, seed=0
    )
    acc = hungarian_acc(y, res.pseudo_labels)
    print(f"GCC acc {acc:.3f}")
    assert acc > 0.5
    assert res.embedding.shape == (len(y), 128)


_PRETEXT = PretextSpec(epochs=20, features_dim=64)


@pytest.fixture(scope="module")
def simclr_ckpt(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimCLR model trained on digits (core.clustering.pretext, 20 epochs, about 8 s), saved as an
    upload: safetensors with SCAN's ``backbone.*`` / ``contrastive_head.*`` keys and the input
    normalisation it was trained with (a bare SCAN .pth carries none; loading those is tested in
    test_models.py)."""
    model, _ = train_simclr(digits[0], _PRETEXT, backbone="small_cnn", seed=0)
    path = tmp_path_factory.mktemp("simclr") / "simclr.safetensors"
    save_safetensors(model, path)
    return path


def _digits_dataset(x: torch.Tensor, y: np.ndarray) -> ImageDataset:
    return ImageDataset(
        images=(x * 255).round().to(torch.uint8).permute(0, 2, 3, 1), labels=torch.from_numpy(y)
    )


def test_gcc_from_an_uploaded_simclr_checkpoint_beats_gcc_from_scratch(digits, simclr_ckpt: Path) -> None:
    """GCC fine-tunes the uploaded SimCLR backbone and projection head, its kNN graph starting from
    the model's embedding and its assignment head from soft k-means on the backbone's features
    (warm_start_head); from scratch it gets a new backbone and a graph on PCA-30 features. Same GCC
    budget (20 epochs) both ways; measured at seed 0: 0.884 from the checkpoint, 0.693 from scratch.
    (Without the warm start the checkpoint run reached only 0.710: the random assignment head spent
    the budget rediscovering clusters that k-means finds at once in those features, 0.894.)"""
    x, pca, y = digits
    model = load_embedding_model(simclr_ckpt).eval()
    spec = BaseSpec(method="gcc", gcc={"epochs": 20})
    accs = {}
    for source, inputs in (
        ("checkpoint", MethodInputs(x, embed_images(model, x), model, "embedding_checkpoint")),
        ("scratch", MethodInputs(x, pca)),
    ):
        res = run_method("gcc", inputs, spec, num_clusters=10, seed=0)
        assert res.info["backbone_source"] == ("new" if source == "scratch" else "embedding_checkpoint")
        accs[source] = hungarian_acc(y, res.pseudo_labels)
    print(f"GCC accuracy by starting point {accs}")
    assert accs["scratch"] > 0.6 and accs["checkpoint"] > accs["scratch"] + 0.1, accs


@pytest.mark.parametrize("method", ["dec", "idec", "dcn"])
def test_deep_clustering_on_an_uploaded_backbone(digits, simclr_ckpt: Path, method: str) -> None:
    """With an embedding checkpoint the autoencoder reconstructs its (standardised) features, not
    pixels; through run_base the upload is loaded, embedded and also seeds the base network."""
    x, _, y = digits
    deep = {"pretrain_epochs": 30, "epochs": 20, "hidden_dims": [128, 128]}
    base = {"method": method, "deep": deep, "fit_epochs": 1, "embedding_checkpoint_id": "simclr"}
    spec = JobSpec(dataset_id="digits", num_clusters=10, seed=0, base=base)
    out = run_base(spec, _digits_dataset(x, y), device="cpu", checkpoint_paths={"simclr": simclr_ckpt})
    assert out.info[method]["input"] == "embedding_checkpoint"
    assert out.info["backbone_source"] == "embedding_checkpoint"
    model = load_embedding_model(simclr_ckpt).eval()
    inputs = MethodInputs(x, embed_images(model, x), model, "embedding_checkpoint")
    res = run_method(method, inputs, BaseSpec(method=method, deep=deep), num_clusters=10, seed=0)
    acc = hungarian_acc(y, res.pseudo_labels)
    print(f"{method} on the SimCLR features: acc {acc:.3f}")
    assert acc > 0.85  # measured: DEC 0.923, IDEC 0.919, DCN 0.919 (k-means on them: 0.909)


def test_scan_head_beats_kmeans_on_an_embedding_trained_here(digits) -> None:
    """SCAN's pipeline without an upload: SimCLR on the images (core.clustering.pretext), then the
    SCAN head on that fixed embedding beats k-means on the same embedding."""
    x, _, y = digits
    model, rows = train_simclr(x, _PRETEXT, backbone="small_cnn", seed=0)
    assert [r["epoch"] for r in rows] == list(range(1, 21)) and rows[-1]["loss"] < rows[0]["loss"] - 0.5
    feats = embed_images(model, x)
    km_acc = hungarian_acc(y, kmeans(feats, 10, restarts=10, seed=0).labels)
    spec = BaseSpec(method="scan")
    res = run_method("scan", MethodInputs(x, feats, model, "pretext"), spec, num_clusters=10, seed=0)
    acc = hungarian_acc(y, res.pseudo_labels)
    print(f"on the SimCLR embedding trained here: k-means {km_acc:.3f}, SCAN head {acc:.3f}")
    assert acc > km_acc


def test_run_base_with_pretext_uses_the_trained_model_like_an_upload(digits) -> None:
    x, _, y = digits
    progress: list[float] = []
    base = {"method": "kmeans", "pretext": _PRETEXT.model_dump(), "backbone": "small_cnn", "fit_epochs": 3}
    spec = JobSpec(dataset_id="digits", num_clusters=10, seed=0, base=base)
    hooks = RunHooks(on_progress=lambda f, _e, _t: progress.append(f))
    out = run_base(spec, _digits_dataset(x, y), device="cpu", hooks=hooks)
    assert len(out.info["pretext"]["per_epoch"]) == 20 and out.info["pretext"]["backbone"] == "small_cnn"
    assert out.info["backbone_source"] == "pretext" and out.info["feature_source"] == "pretext"
    assert out.embedding.shape == (len(y), 64)  # the SimCLR projection, as with an uploaded model
    # pretext epochs report in the first half of the stage, the rest after; never backwards
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert sum(0.0 < f <= 0.5 for f in progress) >= 20
    assert hungarian_acc(y, out.pseudo_labels) > 0.4


def test_pretext_honours_should_stop(digits) -> None:
    x, _, y = digits
    rows: list[dict[str, Any]] = []
    hooks = RunHooks(on_epoch=rows.append, should_stop=lambda: len(rows) >= 2)
    with pytest.raises(StopRequested):
        train_simclr(x, _PRETEXT, backbone="small_cnn", seed=0, hooks=hooks)
    assert [r["epoch"] for r in rows] == [1, 2]
