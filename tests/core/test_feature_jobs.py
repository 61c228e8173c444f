"""Jobs on precomputed features: the spec fields, what a job reads, every embedding base method on a
feature space, RUC with MLP heads end to end (artifacts, resume, feature-space attacks) and, on
digits embeddings built here, refined accuracy against its base over three seeds."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from digits_features import digits_pca_features
from pydantic import ValidationError

from core.clustering.base import run_base
from core.datasets import ImageDataset
from core.errors import CoreInputError
from core.metrics import cluster_accuracy
from core.models import FeatureClusteringModel
from core.pipeline import load_ensemble, run_job
from core.pipeline.base_cache import base_fingerprint, load_base
from core.pipeline.layout import BASE_CACHE
from core.predict.inputs import input_limits, job_inputs, read_features
from core.predict.predictor import Predictor
from core.ruc import train_ruc
from core.spec import JobSpec, RefineSpec, resolve_inputs

K = 3


def _blobs(n: int = 90, d: int = 12, *, seed: int = 0, images: bool = False) -> ImageDataset:
    """K Gaussian blobs in d dimensions (well separated, so every method should find them)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    centres = rng.normal(scale=6.0, size=(K, d))
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    im = torch.from_numpy(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)) if images else None
    return ImageDataset(images=im, features={"emb": torch.from_numpy(x)}, labels=torch.from_numpy(y))


def _loc(err: ValidationError) -> tuple[Any, ...]:
    return err.errors()[0]["loc"]


# ------------------------------------------------------------------------------------------ spec


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"refine": {"input": "features"}, "base": {"method": "gcc"}}, ("base", "method")),
        (
            {
                "refine": {"input": "features"},
                "base": {"method": "checkpoint", "clustering_checkpoint_id": "c"},
            },
            ("base", "method"),
        ),
        ({"refine": {"input": "features", "backbone": "small_cnn"}}, ("refine", "backbone")),
        ({"refine": {"input": "features"}, "base": {"pretext": {}}}, ("base", "pretext")),
        ({"refine": {"input": "pixels"}}, ("refine", "input")),
        ({"base": {"features": "CLIP"}}, ("base", "features")),
        (
            {"refine": {"feature_views": {"strong_dropout": 1.0}}},
            ("refine", "feature_views", "strong_dropout"),
        ),
        ({"refine": {"feature_hidden_dim": 4}}, ("refine", "feature_hidden_dim")),
    ],
)
def test_feature_spec_errors_name_the_field(body: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as err:
        JobSpec(dataset_id="d", num_clusters=3, **body)
    assert _loc(err.value) == loc, err.value


def test_base_features_excludes_other_feature_sources() -> None:
    with pytest.raises(ValidationError, match=r"base.features gives the features to cluster"):
        JobSpec(dataset_id="d", num_clusters=3, base={"features": "clip", "embedding_checkpoint_id": "c"})


def test_resolve_inputs_defaults_and_errors() -> None:
    spec = JobSpec(dataset_id="d", num_clusters=3)
    only = resolve_inputs(spec, has_images=False, feature_spaces={"dino": 8, "clip": 4})
    assert (only.kind, only.space, only.dim) == ("features", "clip", 4)  # first by name
    dflt = resolve_inputs(spec, has_images=False, feature_spaces={"clip": 4, "default": 6})
    assert (dflt.space, dflt.dim) == ("default", 6)
    # with images the networks read images and the features are not used unless named
    assert resolve_inputs(spec, has_images=True, feature_spaces={"clip": 4}).space is None
    named = JobSpec(dataset_id="d", num_clusters=3, base={"features": "clip"})
    img = resolve_inputs(named, has_images=True, feature_spaces={"clip": 4})
    assert (img.kind, img.space) == ("images", "clip")
    optin = JobSpec(dataset_id="d", num_clusters=3, refine={"input": "features"})
    assert resolve_inputs(optin, has_images=True, feature_spaces={"clip": 4}).kind == "features"
    cases = [
        (
            named,
            False,
            {"dino": 8},
            r"^base.features: the dataset has no feature space 'clip' \(it has: dino\)",
        ),
        (
            JobSpec(dataset_id="d", num_clusters=3, refine={"input": "images"}),
            False,
            {"a": 2},
            r"^refine.input: the dataset has no images",
        ),
        (optin, True, {}, r"^refine.input: the dataset has no feature arrays"),
        # auto resolves to features; gcc needs images
        (
            JobSpec(dataset_id="d", num_clusters=3, base={"method": "gcc"}),
            False,
            {"a": 2},
            r"^base.method: 'gcc' needs images",
        ),
    ]
    for s, has_images, spaces, match in cases:
        with pytest.raises(CoreInputError, match=match):
            resolve_inputs(s, has_images=has_images, feature_spaces=spaces)


# ------------------------------------------------------------------------------------------ base


@pytest.mark.parametrize(
    "base",
    [
        {"method": "kmeans"},
        {"method": "kmeans", "auto_k": {"estimators": ["silhouette"], "k_max": 6}},
        {"method": "scan", "scan": {"epochs": 15, "self_label_epochs": 2, "knn": 5}},
        {"method": "dec", "deep": {"pretrain_epochs": 3, "epochs": 3, "hidden_dims": [32]}},
        {"method": "idec", "deep": {"pretrain_epochs": 3, "epochs": 3, "hidden_dims": [32]}},
        {"method": "dcn", "deep": {"pretrain_epochs": 3, "epochs": 3, "hidden_dims": [32]}},
    ],
    ids=["kmeans", "auto_k", "scan", "dec", "idec", "dcn"],
)
def test_embedding_base_methods_run_on_a_feature_space(base: dict[str, Any]) -> None:
    ds = _blobs()
    k = None if "auto_k" in base else K
    spec = JobSpec(
        dataset_id="d",
        num_clusters=k,
        seed=1,
        base={"fit_epochs": 5, "kmeans_restarts": 2, **base},
        refine={"feature_hidden_dim": 32},
    )
    out = run_base(spec, ds, device="cpu")
    acc = cluster_accuracy(ds.labels.numpy(), out.pseudo_labels.numpy(), K)
    print(f"{base['method']}{' auto_k' if k is None else ''}: K={out.probs.shape[1]} acc {acc:.3f}")
    assert isinstance(out.model, FeatureClusteringModel) and out.model.backbone_name == "mlp"
    assert out.info["input"] == "features" and out.info["feature_space"]["name"] == "emb"
    assert out.info["embedding_source"] == "dataset_features"
    assert torch.equal(out.embedding, ds.features["emb"])  # metric sampling searches the features
    assert out.probs.shape == (90, K) and acc >= 0.7  # chance: about 0.4


def test_image_job_can_cluster_a_feature_space_of_its_dataset() -> None:
    ds = _blobs(images=True)
    spec = JobSpec(
        dataset_id="d", num_clusters=K, base={"features": "emb", "backbone": "small_cnn", "fit_epochs": 1}
    )
    out = run_base(spec, ds, device="cpu")
    assert out.info["input"] == "images" and out.info["feature_source"] == "dataset_features"
    assert out.model.backbone_name == "small_cnn" and "pca" not in out.info
    assert torch.equal(out.embedding, ds.features["emb"])
    # k-means found the blobs in the features (the random pixels carry nothing)
    sizes = out.info["kmeans"]["cluster_sizes"]
    assert sorted(sizes) == [30, 30, 30], sizes


def test_train_ruc_refuses_inputs_that_do_not_fit_the_network() -> None:
    net = FeatureClusteringModel(4, 8, 2)
    pseudo, clean = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.bool)
    with pytest.raises(CoreInputError, match=r"^features: have 5 dimensions, the base network reads 4"):
        train_ruc(
            net, torch.zeros(6, 5), pseudo, clean, RefineSpec(epochs=1), num_clusters=2, seed=0, device="cpu"
        )
    with pytest.raises(CoreInputError, match=r"^images: expected uint8 images .* for FeatureClusteringModel"):
        images = torch.zeros(6, 4, 4, 1, dtype=torch.uint8)
        train_ruc(net, images, pseudo, clean, RefineSpec(epochs=1), num_clusters=2, seed=0, device="cpu")


# ------------------------------------------------------------------------------------ whole jobs


def _feature_spec(seed: int, *, epochs: int, **refine: Any) -> JobSpec:
    return JobSpec(
        dataset_id="d",
        num_clusters=10 if "k" not in refine else refine.pop("k"),
        seed=seed,
        refine={"epochs": epochs, "batch_size": 128, **refine},
        evaluate={
            "attacks": [{"kind": "fgsm", "eps": [0.25]}, {"kind": "bim", "eps": [0.25], "steps": 2}],
            "attack_max_samples": 300,
        },
    )


def test_feature_job_end_to_end_artifacts_and_base_cache(tmp_path: Path) -> None:
    ds = _blobs(n=120, d=8)
    spec = _feature_spec(
        0, epochs=2, k=K, feature_hidden_dim=32, batch_size=16, strategy="hybrid", confidence_threshold=0.5
    )
    first = run_job(spec, ds, device="cpu", work_dir=tmp_path).result
    info = first["base_info"]
    assert (info["input"], info["backbone"], info["feature_space"]["dim"]) == ("features", "mlp", 8)
    assert first["dataset"]["has_images"] is False and first["dataset"]["feature_spaces"] == {"emb": 8}
    rob = first["robustness"]["refined"]
    # the radius is relative to the features' spread, and the result says so
    scale = float(ds.features["emb"].std(0, unbiased=False).mean())
    assert rob["space"] == "features" and rob["eps_scale"] == pytest.approx(scale, rel=1e-4)
    assert first["robustness"]["base"]["eps_scale"] == rob["eps_scale"]
    nets = load_ensemble(tmp_path / "refined_ensemble.safetensors")
    assert len(nets) == 2 and all(isinstance(n, FeatureClusteringModel) for n in nets)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(n(ds.features["emb"]), 1) for n in nets]).mean(0)
    assert probs.argmax(1).tolist() == _refined_clusters(tmp_path)
    _predicts_its_own_rows(first, tmp_path, ds.features["emb"])
    # the base cache a resumed job reads rebuilds the feature network with its statistics
    fingerprint = base_fingerprint(spec, ds, {})
    cached = load_base(tmp_path / BASE_CACHE, fingerprint, torch.device("cpu"))
    assert cached is not None and isinstance(cached.model, FeatureClusteringModel)
    assert torch.allclose(cached.model.mean, ds.features["emb"].mean(0, keepdim=True), atol=1e-5)
    with torch.no_grad():
        cached_probs = torch.softmax(cached.model(ds.features["emb"]), 1)
    assert torch.allclose(cached_probs, cached.probs, atol=1e-5)
    other = spec.model_copy(update={"refine": spec.refine.model_copy(update={"feature_hidden_dim": 16})})
    assert base_fingerprint(other, ds, {}) != fingerprint  # the base network's width is part of it


def _predicts_its_own_rows(result: dict[str, Any], work_dir: Path, x: torch.Tensor) -> None:
    """The Predictor of a feature job reads the rows of its array (``features_emb``) as the job did."""
    wanted = job_inputs(result, max_images=1000, max_values=10**6)
    assert (wanted.field, wanted.feature_dim, wanted.image_shape) == ("features_emb", 8, None)
    upload = work_dir / "rows.npz"
    np.savez(upload, features_emb=x.double().numpy(), images=np.zeros((3, 4, 4, 1), np.uint8))
    rows = torch.from_numpy(read_features(upload, wanted, input_limits(wanted)))
    predictor = Predictor.load(work_dir / "refined_ensemble.safetensors")
    assert (predictor.feature_dim, predictor.channels_last, predictor.autocast_dtype) == (8, False, None)
    assert predictor.check(rows, max_images=wanted.max_images, field=wanted.field) == x.shape[0]
    assert predictor.predict(rows).argmax(1).tolist() == _refined_clusters(work_dir)
    bad = x.numpy().copy()
    bad[5, 1] = np.inf
    np.savez(upload, features_emb=bad)
    with pytest.raises(CoreInputError) as err:
        read_features(upload, wanted, input_limits(wanted))
    assert (err.value.field, "first in row 5" in err.value.problem) == ("features_emb", True)


def _refined_clusters(work_dir: Path) -> list[int]:
    """The refined cluster of every sample, as assignments.csv lists it."""
    import csv

    with (work_dir / "assignments.csv").open() as fh:
        return [int(row["refined_cluster"]) for row in csv.DictReader(fh)]


SEEDS = (0, 1, 2)


def test_ruc_on_digits_embeddings_keeps_or_beats_its_base_over_three_seeds(tmp_path: Path) -> None:
    """Must show: digits embeddings built here (top-32 PCA of the pixels), written as a features
    npz, through run_job with the defaults a feature job gets (k-means on the features, MLP base
    network, metric clean set, MLP heads with the default feature views), 5 epochs."""
    feats, labels = digits_pca_features(32)
    path = tmp_path / "digits_features.npz"
    np.savez(path, features_pca=feats, labels=labels)
    from core.datasets import load_dataset

    ds = load_dataset(path)
    rows = []
    for seed in SEEDS:
        r = run_job(_feature_spec(seed, epochs=5), ds, device="cpu", work_dir=tmp_path / str(seed)).result
        rows.append((r["base"]["acc"], r["refined"]["acc"], r["base"]["ece"], r["refined"]["ece"]))
        rob = r["robustness"]
        fgsm = [block["attacks"][0]["accuracy"] for block in (rob["base"], rob["refined"])]
        b, f, be, fe = rows[-1]
        print(
            f"seed {seed}: acc {b:.3f} -> {f:.3f}, ece {be:.3f} -> {fe:.3f}, FGSM eps 0.25 x "
            f"{rob['base']['eps_scale']:.3f}: acc {fgsm[0]:.3f} -> {fgsm[1]:.3f}"
        )
    base_acc = statistics.fmean(b for b, *_ in rows)
    refined_acc = statistics.fmean(f for _, f, *_ in rows)
    print(f"mean of 3 seeds: acc {base_acc:.3f} -> {refined_acc:.3f}")
    assert refined_acc >= base_acc, rows
