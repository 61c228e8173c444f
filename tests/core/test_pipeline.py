"""run_job and run_base end to end on small synthetic images (CPU, seconds each)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from core.clustering.base import predict_probs, run_base
from core.datasets import ImageDataset
from core.errors import CoreInputError, StopRequested
from core.hooks import RunHooks
from core.metrics import cluster_accuracy
from core.models import ClusteringModel, EmbeddingModel, build_backbone, save_safetensors
from core.pipeline import REPORT_ARTIFACT_NAMES, STAGES, load_ensemble, run_job
from core.spec import AttackSpec, BaseSpec, EvaluateSpec, JobSpec, RefineSpec

K = 3
N = 72


def _synthetic(n: int = N, *, labels: bool = True, seed: int = 0) -> ImageDataset:
    """Three classes of 8x8 one-channel images: a horizontal bar, a vertical bar, a diagonal, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    imgs = rng.uniform(0, 60, size=(n, 8, 8)).astype(np.float64)
    for i, c in enumerate(y):
        off = int(rng.integers(2, 6))
        if c == 0:
            imgs[i, off, 1:7] += 180
        elif c == 1:
            imgs[i, 1:7, off] += 180
        else:
            imgs[i, np.arange(1, 7), np.arange(1, 7)] += 180
    u8 = np.clip(imgs, 0, 255).astype(np.uint8)[..., None]
    return ImageDataset(
        images=torch.from_numpy(u8), labels=torch.from_numpy(y.astype(np.int64)) if labels else None
    )


def _spec(**base: object) -> JobSpec:
    refine = RefineSpec(
        strategy="hybrid", confidence_threshold=0.5, knn_k=5, epochs=3, batch_size=16, refurbish_every=1
    )
    evaluate = EvaluateSpec(
        attacks=[AttackSpec(kind="fgsm", eps=[4 / 255]), AttackSpec(kind="bim", eps=[4 / 255], steps=2)],
        attack_max_samples=24,
    )
    b = {"fit_epochs": 3, "kmeans_restarts": 2, "pca_dim": 8, "backbone": "small_cnn", **base}
    return JobSpec(
        dataset_id="syn", num_clusters=K, seed=3, base=BaseSpec(**b), refine=refine, evaluate=evaluate
    )


def _comparable(result: dict) -> dict:
    """The result without wall-clock figures and the resume flag."""
    r = json.loads(json.dumps(result))
    r.pop("timings")
    r["base_info"].pop("reused_from_cache")
    for e in r["per_epoch"]:
        e.pop("seconds", None)
    return r


def test_run_job_labeled_end_to_end(tmp_path: Path) -> None:
    ds = _synthetic()
    stages: list[str] = []
    epochs: list[dict] = []
    out = run_job(
        _spec(),
        ds,
        device="cpu",
        work_dir=tmp_path,
        hooks=RunHooks(on_stage=stages.append, on_epoch=epochs.append),
    )
    assert stages == list(STAGES)
    r = out.result
    assert json.loads(json.dumps(r)) == r  # JSON-serialisable as is
    for key in (
        "base",
        "refined",
        "clean_set",
        "robustness",
        "per_epoch",
        "agreement",
        "notes",
        "timings",
        "device",
    ):
        assert key in r
    assert r["spec"]["num_clusters"] == K and r["device"] == "cpu"
    assert set(r["timings"]) == set(STAGES) and all(v >= 0 for v in r["timings"].values())
    assert 0 <= r["base"]["acc"] <= 1 and 0 <= r["refined"]["acc"] <= 1 and r["base"]["ece"] is not None
    assert len(r["per_epoch"]) == 3 == len(epochs)
    assert 0 <= r["agreement"]["aligned"] <= 1 and r["agreement"]["aligned"] >= r["agreement"]["raw"]
    init = r["clean_set"]["initial"]
    assert (
        init["precision"] is not None and 0 < init["size"] <= N and sum(init["per_cluster"]) == init["size"]
    )
    # The final clean set is the initial one plus what refurbishing accepted, epoch by epoch
    # (that refurbishing grows it on real data is checked in test_collapse.py on digits).
    refurbished = sum(e["refurbished"] for e in r["per_epoch"])
    assert r["clean_set"]["final"]["size"] == init["size"] + refurbished
    assert r["clean_set"]["selected"] == "hybrid" and "'hybrid'" in r["clean_set"]["reason"]
    assert r["best_run"]["index"] == 0 and len(r["runs"]) == 1
    assert r["summary"]["acc"]["mean"] == r["refined"]["acc"] and r["summary"]["acc"]["std"] is None
    assert set(r["collapse"]["figures"]) == {
        "agreement",
        "normalised_confidence",
        "new_empty_clusters",
        "merged_clusters",
        "size_entropy_ratio",
    }
    for name in ("base", "refined"):
        rob = r["robustness"][name]
        assert rob["num_samples"] == 24 and len(rob["attacks"]) == 2
        assert all(a["accuracy"] is not None and 0 <= a["stability"] <= 1 for a in rob["attacks"])
    # knn_k=5 < N-1: no clipping note.
    assert not any("knn_k" in n for n in r["notes"])

    # Artifacts
    core_names = {"refined_ensemble.safetensors", "assignments.csv", "result.json", "model.onnx"}
    assert set(out.artifacts) == core_names | set(REPORT_ARTIFACT_NAMES)  # labelled: every figure
    assert json.loads(out.artifacts["result.json"].read_text()) == r
    rows = list(csv.reader(out.artifacts["assignments.csv"].open()))
    assert rows[0] == [
        "index",
        "base_cluster",
        "base_confidence",
        "refined_cluster",
        "refined_confidence",
        "clean",
    ]
    assert len(rows) == N + 1
    refined_sizes = np.bincount([int(row[3]) for row in rows[1:]], minlength=K).tolist()
    assert refined_sizes == r["refined"]["cluster_sizes"]
    with safe_open(str(out.artifacts["refined_ensemble.safetensors"]), framework="pt") as fh:
        keys = list(fh.keys())
        assert fh.metadata()["kind"] == "ruc_ensemble"
    assert any(k.startswith("net1.backbone.") for k in keys) and any(
        k.startswith("net2.cluster_head.") for k in keys
    )
    # The saved ensemble reproduces the refined probabilities.
    nets = load_ensemble(out.artifacts["refined_ensemble.safetensors"])
    x = ds.to_float("cpu")
    probs = torch.stack([predict_probs(net, x) for net in nets]).mean(0)
    assert probs.argmax(1).bincount(minlength=K).tolist() == r["refined"]["cluster_sizes"]
    assert (tmp_path / "base.pt").is_file() and (tmp_path / "ruc_checkpoint.pt").is_file()


def test_unlabeled_dataset_gives_label_free_figures(tmp_path: Path) -> None:
    r = run_job(_spec(), _synthetic(labels=False), device="cpu", work_dir=tmp_path).result
    for name in ("base", "refined"):
        assert r[name]["acc"] is None and r[name]["ece"] is None and r[name]["nmi"] is None
        assert r[name]["unavailable_reason"] == "dataset has no labels"
        assert r[name]["mean_confidence"] is not None and sum(r[name]["cluster_sizes"]) == N
        rob = r["robustness"][name]
        assert rob["unavailable_reason"] and all(a["accuracy"] is None for a in rob["attacks"])
        assert all(0 <= a["stability"] <= 1 for a in rob["attacks"])
    for which in ("initial", "final"):
        cs = r["clean_set"][which]
        assert (
            cs["precision"] is None
            and cs["recall"] is None
            and cs["unavailable_reason"] == "dataset has no labels"
        )
        assert cs["size"] > 0
    assert 0 <= r["agreement"]["aligned"] <= 1
    json.dumps(r, allow_nan=False)


def test_stopped_then_resumed_job_equals_uninterrupted(tmp_path: Path) -> None:
    ds = _synthetic()
    spec = _spec()
    full = run_job(spec, ds, device="cpu", work_dir=tmp_path / "a").result

    seen: list[int] = []
    stop_after_first_epoch = RunHooks(
        on_epoch=lambda m: seen.append(m["epoch"]), should_stop=lambda: len(seen) >= 1
    )
    with pytest.raises(StopRequested):
        run_job(spec, ds, device="cpu", work_dir=tmp_path / "b", hooks=stop_after_first_epoch)
    assert seen == [1]
    assert (tmp_path / "b" / "base.pt").is_file() and not (tmp_path / "b" / "result.json").exists()

    resumed_epochs: list[int] = []
    resumed = run_job(
        spec,
        ds,
        device="cpu",
        work_dir=tmp_path / "b",
        hooks=RunHooks(on_epoch=lambda m: resumed_epochs.append(m["epoch"])),
    ).result
    assert resumed_epochs == [2, 3]  # continued, not restarted
    assert resumed["base_info"]["reused_from_cache"] is True
    assert _comparable(resumed) == _comparable(full)
    assert (tmp_path / "a" / "assignments.csv").read_bytes() == (
        tmp_path / "b" / "assignments.csv"
    ).read_bytes()


def test_resume_false_recomputes_and_changed_spec_ignores_cache(tmp_path: Path) -> None:
    ds = _synthetic()
    run_job(_spec(), ds, device="cpu", work_dir=tmp_path)
    r2 = run_job(_spec(), ds, device="cpu", work_dir=tmp_path, resume=False).result
    assert r2["base_info"]["reused_from_cache"] is False
    r3 = run_job(_spec(pca_dim=6), ds, device="cpu", work_dir=tmp_path).result
    assert r3["base_info"]["reused_from_cache"] is False and r3["base_info"]["pca"]["dim"] == 6


def test_knn_k_clipped_and_fallback_noted(tmp_path: Path) -> None:
    ds = _synthetic(n=24)
    events: list[tuple[str, str]] = []
    spec = _spec().model_copy(
        update={
            "refine": RefineSpec(
                strategy="hybrid", confidence_threshold=0.999999, knn_k=100, epochs=1, batch_size=8
            )
        }
    )
    r = run_job(
        spec,
        ds,
        device="cpu",
        work_dir=tmp_path,
        hooks=RunHooks(on_event=lambda lv, m: events.append((lv, m))),
    ).result
    assert any("knn_k=100" in n and "k=23" in n for n in r["notes"])
    assert r["clean_set"]["knn_k"] == 23
    fallback = [n for n in r["notes"] if n.startswith("clean-set fallback")]
    assert fallback and all(("warning", n) in events for n in fallback)
    assert r["clean_set"]["initial"]["size"] > r["clean_set"]["selected_size"]
    assert min(r["clean_set"]["initial"]["per_cluster"]) >= 1 or 0 in r["base"]["cluster_sizes"]


# ----------------------------------------------------------------------------------------------
# run_base: methods and bad inputs
# ----------------------------------------------------------------------------------------------


def test_base_kmeans_is_deterministic_and_fits_its_labels() -> None:
    ds = _synthetic()
    a = run_base(_spec(fit_epochs=15), ds, device="cpu")
    b = run_base(_spec(fit_epochs=15), ds, device="cpu")
    assert torch.equal(a.pseudo_labels, b.pseudo_labels) and torch.equal(a.probs, b.probs)
    assert a.probs.shape == (N, K) and torch.allclose(a.probs.sum(1), torch.ones(N), atol=1e-5)
    assert torch.equal(a.pseudo_labels, a.probs.argmax(1))
    assert a.embedding.shape == (N, 8) and a.info["embedding_source"] == "pca"
    # k-means on 8 PCA dims of these images is ~80% right; the CNN fitted to it generalises to
    # the bar orientation (measured: 1.0 at 15 epochs) while still agreeing with most k-means labels.
    assert cluster_accuracy(ds.labels.numpy(), a.pseudo_labels.numpy(), K) >= 0.9
    assert a.info["agreement_with_targets"] > 0.6
    assert a.info["kmeans"]["cluster_sizes"] and sum(a.info["kmeans"]["cluster_sizes"]) == N


def test_base_labels_method_hard_and_soft() -> None:
    ds = _synthetic()
    rng = np.random.default_rng(1)
    hard = ds.labels.clone()
    flip = torch.from_numpy(rng.random(N) < 0.1)
    hard[flip] = (hard[flip] + 1) % K  # 10% noisy uploaded assignments
    ds_hard = ImageDataset(images=ds.images, labels=ds.labels, assignments=hard)
    out = run_base(_spec(method="labels", fit_epochs=20), ds_hard, device="cpu")
    assert out.info["assignments"] == "hard" and out.info["agreement_with_targets"] > 0.75
    assert float((out.pseudo_labels == hard).float().mean()) == pytest.approx(
        out.info["agreement_with_targets"]
    )

    soft = torch.nn.functional.one_hot(hard, K).float() * 0.7 + 0.1
    out2 = run_base(
        _spec(method="labels", fit_epochs=20), ImageDataset(images=ds.images, assignments=soft), device="cpu"
    )
    assert out2.info["assignments"] == "probabilities" and out2.probs.shape == (N, K)
    assert out2.info["agreement_with_targets"] > 0.75


def _save_clustering(path: Path, k: int = K) -> ClusteringModel:
    torch.manual_seed(0)
    bb, dim = build_backbone("small_cnn", in_channels=1)
    model = ClusteringModel(bb, dim, k, nheads=2).eval()
    save_safetensors(model, path)
    return model


def test_base_checkpoint_method(tmp_path: Path) -> None:
    ds = _synthetic()
    model = _save_clustering(tmp_path / "c.safetensors")
    spec = _spec(method="checkpoint", clustering_checkpoint_id="ck", head=1)
    out = run_base(spec, ds, device="cpu", checkpoint_paths={"ck": tmp_path / "c.safetensors"})
    model.active_head = 1
    expected = predict_probs(model, ds.to_float("cpu"))
    assert torch.allclose(out.probs, expected, atol=1e-5)
    assert torch.equal(out.pseudo_labels, out.probs.argmax(1))
    assert (
        out.embedding.shape == (N, 128) and out.info["embedding_source"] == "clustering_checkpoint_backbone"
    )


def test_base_kmeans_on_uploaded_embedding(tmp_path: Path) -> None:
    ds = _synthetic()
    torch.manual_seed(0)
    bb, dim = build_backbone("small_cnn", in_channels=1)
    emb = EmbeddingModel(bb, dim, features_dim=16).eval()
    save_safetensors(emb, tmp_path / "e.safetensors")
    out = run_base(
        _spec(embedding_checkpoint_id="em"),
        ds,
        device="cpu",
        checkpoint_paths={"em": tmp_path / "e.safetensors"},
    )
    assert out.info["feature_source"] == "embedding_checkpoint" and "pca" not in out.info
    assert out.embedding.shape == (N, 16)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(N), atol=1e-4)
    # The base network starts from the embedding model's backbone.
    assert out.info["backbone_source"] == "embedding_checkpoint"


@pytest.mark.parametrize(
    ("base", "dataset_kw", "ckpts", "field"),
    [
        ({"method": "labels"}, {}, {}, "base.method"),
        ({"method": "labels"}, {"assignments": torch.arange(N) % (K + 1)}, {}, "num_clusters"),
        ({"method": "labels"}, {"assignments": torch.full((N, K + 1), 1 / (K + 1))}, {}, "num_clusters"),
        (
            {"method": "checkpoint", "clustering_checkpoint_id": "nope"},
            {},
            {},
            "base.clustering_checkpoint_id",
        ),
        ({"method": "checkpoint", "clustering_checkpoint_id": "ck5"}, {}, {"ck5": "k5"}, "num_clusters"),
        (
            {"method": "checkpoint", "clustering_checkpoint_id": "ck", "head": 7},
            {},
            {"ck": "k3"},
            "base.head",
        ),
        ({"embedding_checkpoint_id": "ghost"}, {}, {}, "base.embedding_checkpoint_id"),
        ({"embedding_checkpoint_id": "ck"}, {}, {"ck": "k3"}, "base.embedding_checkpoint_id"),
    ],
)
def test_bad_base_inputs_name_the_field(
    tmp_path: Path, base: dict, dataset_kw: dict, ckpts: dict[str, str], field: str
) -> None:
    files = {"k3": tmp_path / "k3.safetensors", "k5": tmp_path / "k5.safetensors"}
    _save_clustering(files["k3"], K)
    _save_clustering(files["k5"], 5)
    ds = _synthetic(n=24)
    ds = ImageDataset(images=ds.images, labels=ds.labels, **{k: v[:24] for k, v in dataset_kw.items()})
    with pytest.raises(CoreInputError) as ei:
        run_base(_spec(**base), ds, device="cpu", checkpoint_paths={k: files[v] for k, v in ckpts.items()})
    assert ei.value.field == field, ei.value


def test_base_stops_between_epochs() -> None:
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(StopRequested):
        run_base(_spec(fit_epochs=50), _synthetic(), device="cpu", hooks=RunHooks(should_stop=should_stop))
    assert calls["n"] == 3


# ----------------------------------------------------------------------------------------------
# the default clean-set rule and several seeds in one job
# ----------------------------------------------------------------------------------------------


def test_auto_strategy_reports_its_decision(tmp_path: Path) -> None:
    spec = _spec().model_copy(
        update={"refine": RefineSpec(strategy="auto", knn_k=5, epochs=1, batch_size=16)}
    )
    r = run_job(spec, _synthetic(), device="cpu", work_dir=tmp_path).result
    cs = r["clean_set"]
    assert cs["strategy"] == "auto" and cs["selected"] in ("hybrid", "ranked", "mixed")
    inputs = cs["decision"]["inputs"]
    assert inputs["confidence_threshold"] == 0.99 and inputs["knn_k"] == 5
    assert 0 <= inputs["hybrid_fraction"] <= inputs["metric_fraction"] <= 1
    ranked, hybrid = cs["decision"]["clusters_ranked"], cs["decision"]["clusters_hybrid"]
    assert sorted(ranked + hybrid) == [c for c in range(K) if r["base"]["cluster_sizes"][c] > 0]
    # A ranked cluster keeps ceil(auto_cluster_fraction * size) of its kNN-consistent members at most.
    for c in ranked:
        assert 1 <= cs["initial"]["per_cluster"][c] <= -(-r["base"]["cluster_sizes"][c] // 2)
    assert "tau1=0.99" in cs["reason"]


def _repeats_spec(**update: object) -> JobSpec:
    """Over-clustered (K = 4 clusters for 3 classes) so that many-to-one accuracy matters."""
    d = _spec().model_dump()
    d.update(num_clusters=K + 1, **update)
    d["refine"].update(epochs=2)
    return JobSpec.model_validate(d)


def test_repeats_report_every_run_mean_and_std(tmp_path: Path) -> None:
    progress: list[tuple[str, float, int | None, int | None]] = []
    stage = {"now": ""}

    def on_stage(name: str) -> None:
        stage["now"] = name

    hooks = RunHooks(on_stage=on_stage, on_progress=lambda f, e, t: progress.append((stage["now"], f, e, t)))
    out = run_job(_repeats_spec(repeats=3), _synthetic(), device="cpu", work_dir=tmp_path, hooks=hooks)
    r = out.result
    assert [run["seed"] for run in r["runs"]] == [3, 4, 5]
    for name in ("acc", "nmi", "ari", "ece", "many_to_one_acc", "robustness.clean_accuracy"):
        values = [run["refined"][name] for run in r["runs"]] if "." not in name else None
        s = r["summary"][name]
        if values is not None:
            assert s["values"] == values
        assert s["mean"] == pytest.approx(float(np.mean(s["values"])))
        assert s["std"] == pytest.approx(float(np.std(s["values"], ddof=1)))
    attack_keys = [key for key in r["summary"] if key.startswith("robustness.fgsm")]
    assert attack_keys == ["robustness.fgsm_eps0.0157.accuracy", "robustness.fgsm_eps0.0157.stability"]
    # Over-clustered: many-to-one accuracy counts every cluster, so it is at least Hungarian's.
    for run in r["runs"]:
        assert run["refined"]["many_to_one_acc"] >= run["refined"]["acc"]
    # The artifacts are the best run's: its assignments are those of assignments.csv.
    best = r["best_run"]["index"]
    assert r["best_run"]["seed"] == r["runs"][best]["seed"] and len(r["best_run"]["consensus"]) == 3
    rows = list(csv.reader(out.artifacts["assignments.csv"].open()))[1:]
    sizes = np.bincount([int(row[3]) for row in rows], minlength=K + 1).tolist()
    assert sizes == r["runs"][best]["refined"]["cluster_sizes"] == r["refined"]["cluster_sizes"]
    # One continuous refinement for the hooks: epochs 1..6 of 6, progress never goes back.
    assert [(e["epoch"], e["run"], e["run_epoch"]) for e in r["per_epoch"]] == [
        (1, 0, 1), (2, 0, 2), (3, 1, 1), (4, 1, 2), (5, 2, 1), (6, 2, 2)
    ]  # fmt: skip
    refining = [(f, e, t) for st, f, e, t in progress if st == "refining"]
    assert [f for f, _, _ in refining] == sorted(f for f, _, _ in refining) and refining[-1][0] == 1.0
    assert {t for _, _, t in refining if t is not None} == {6}
    assert [p.name for p in sorted(tmp_path.glob("run_*"))] == [
        "run_0_seed_3",
        "run_1_seed_4",
        "run_2_seed_5",
    ]


def test_repeats_resume_continues_the_run_it_was_in(tmp_path: Path) -> None:
    ds = _synthetic()
    spec = _repeats_spec(seeds=[7, 2])
    full = run_job(spec, ds, device="cpu", work_dir=tmp_path / "a").result

    seen: list[int] = []
    stop_in_second_run = RunHooks(
        on_epoch=lambda m: seen.append(m["epoch"]), should_stop=lambda: len(seen) >= 3
    )
    with pytest.raises(StopRequested):
        run_job(spec, ds, device="cpu", work_dir=tmp_path / "b", hooks=stop_in_second_run)
    assert seen == [1, 2, 3]
    resumed_epochs: list[tuple[int, int]] = []
    resumed = run_job(
        spec,
        ds,
        device="cpu",
        work_dir=tmp_path / "b",
        hooks=RunHooks(on_epoch=lambda m: resumed_epochs.append((m["run"], m["run_epoch"]))),
    ).result
    assert resumed_epochs == [(1, 2)]  # run 0 was complete, run 1 continues at its epoch 2
    assert _comparable(resumed) == _comparable(full)
