"""ViT checkpoints in jobs: a bare DINOv2-layout embedding model gives k-means its class-token
embedding, and a SCAN-layout clustering model around a torchvision ViT is the base network at
another image size, refined by RUC; the base cache and the refined ensemble rebuild the ViT from
what they store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from vit_reference import DinoV2Reference, jitter

from core.clustering.base import predict_probs, run_base
from core.datasets import ImageDataset
from core.models import VisionTransformer, load_clustering_model
from core.pipeline import load_ensemble
from core.pipeline.artifacts import save_ensemble
from core.pipeline.base_cache import base_fingerprint, load_base, save_base
from core.ruc.trainer import train_ruc
from core.spec import AttackSpec, BaseSpec, EvaluateSpec, JobSpec, RefineSpec
from core.spec.common import NORMALISATION_PRESETS

K = 3
IMAGENET = {
    "mean": list(NORMALISATION_PRESETS["imagenet"][0]),
    "std": list(NORMALISATION_PRESETS["imagenet"][1]),
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _colours(n: int, side: int) -> ImageDataset:
    """Three classes of RGB images, each brightest in one channel, plus noise."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % K
    images = rng.integers(0, 90, (n, side, side, 3))
    images[np.arange(n), :, :, y] += 150
    return ImageDataset(images=torch.from_numpy(images.astype(np.uint8)), labels=torch.from_numpy(y))


def _spec(**base: object) -> JobSpec:
    return JobSpec(
        dataset_id="syn",
        num_clusters=K,
        seed=0,
        base=BaseSpec(**{"fit_epochs": 2, "kmeans_restarts": 2, **base}),  # type: ignore[arg-type]
        refine=RefineSpec(strategy="confidence", confidence_threshold=0.5, epochs=1, batch_size=16),
        evaluate=EvaluateSpec(attacks=[AttackSpec(kind="fgsm", eps=[4 / 255])], attack_max_samples=8),
    )


def test_a_bare_dinov2_vit_embeds_the_images_for_kmeans(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = jitter(DinoV2Reference(img_size=28, patch=7, dim=64, depth=2, heads=1, registers=2), 0.05)
    torch.save(ref.state_dict(), tmp_path / "dinov2.pth")
    ds = _colours(36, 28)
    out = run_base(
        _spec(method="kmeans", embedding_checkpoint_id="em"),
        ds,
        device="cpu",
        checkpoint_paths={"em": tmp_path / "dinov2.pth"},
    )
    info = out.info
    assert (
        info["feature_source"] == "embedding_checkpoint" and info["backbone_source"] == "embedding_checkpoint"
    )
    emb = info["embedding_checkpoint"]
    assert emb["vit"]["layout"] == "dinov2" and emb["vit"]["job"]["pos_embed"] == "checkpoint"
    assert emb["normalisation"] == {**IMAGENET, "source": "checkpoint_layout", "preset": "imagenet"}
    assert emb["keys"] == {"matched": len(ref.state_dict()) - 1, "ignored": ["mask_token"]}
    x = ds.to_float("cpu")
    mean, std = (torch.tensor(IMAGENET[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = F.normalize(ref((x - mean) / std), dim=1)
    # k-means clustered the class tokens after the final norm, L2-normalised
    assert out.embedding.shape == (36, 64) and torch.allclose(out.embedding, expected, atol=1e-5)


def _scan_vit_file(path: Path) -> torchvision.models.VisionTransformer:
    """SCAN's layout (``{'model', 'head'}``, backbone.* + cluster_head.<i>.*) around a torchvision
    ViT trained at 32 px."""
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=1, hidden_dim=64, mlp_dim=128, num_classes=1
    )
    jitter(tv, 0.05)
    sd = {f"backbone.{k}": v for k, v in tv.state_dict().items() if not k.startswith("heads.")}
    for i in range(2):
        sd[f"cluster_head.{i}.weight"] = torch.randn(K, 64)
        sd[f"cluster_head.{i}.bias"] = torch.zeros(K)
    torch.save({"model": sd, "head": 1}, path)
    return tv


def test_a_scan_layout_vit_is_the_base_refined_by_ruc_and_rebuilt_from_artifacts(
    tmp_path: Path,
) -> None:
    """The base stage, RUC and the two files that rebuild a model (base cache, refined ensemble)
    with a ViT at another image size; run_job's orchestration is test_pipeline's."""
    _scan_vit_file(tmp_path / "scan_vit.pth.tar")
    ds = _colours(48, 16)  # 16 px: the 4x4 patch grid of 32 px resampled to 2x2
    spec = _spec(method="checkpoint", clustering_checkpoint_id="ck")
    paths = {"ck": tmp_path / "scan_vit.pth.tar"}
    x = ds.to_float("cpu")
    start = time.perf_counter()
    base = run_base(spec, ds, device="cpu", checkpoint_paths=paths)
    based = time.perf_counter()
    ck = base.info["checkpoint"]
    assert (ck["backbone"], ck["vit"]["layout"], ck["vit"]["image_size"]) == ("vit", "torchvision", 32)
    assert ck["vit"]["job"] == {
        "input_size": [16, 16],
        "resized": False,
        "grid": [2, 2],
        "checkpoint_grid": [4, 4],
        "pos_embed": "interpolated",
        "tokens": 5,
    }
    assert base.info["normalisation"] == {**IMAGENET, "source": "checkpoint_layout", "preset": "imagenet"}
    # The base network is the file's head 1 at 16 px, ImageNet-normalised.
    model = load_clustering_model(paths["ck"], num_clusters=K, head=None, backbone=None)
    assert torch.allclose(base.probs, predict_probs(model, x), atol=1e-6)
    # The base cache rebuilds it (a resumed job starts from there).
    fingerprint = base_fingerprint(spec, ds, paths)
    save_base(base, tmp_path / "base.pt", fingerprint)
    cached = load_base(tmp_path / "base.pt", fingerprint, torch.device("cpu"))
    assert cached is not None and isinstance(cached.model.backbone, VisionTransformer)
    assert torch.allclose(predict_probs(cached.model, x), base.probs, atol=1e-6)
    # RUC trains copies of the ViT (through the resampled position embedding) ...
    clean = base.probs.max(1).values >= 0.0
    ruc = train_ruc(
        base.model, ds.images, base.pseudo_labels, clean, spec.refine, num_clusters=K, seed=0, device="cpu"
    )
    refined = time.perf_counter()
    moved = [
        float((n.backbone.pos_embed - model.backbone.pos_embed).detach().abs().max()) for n in ruc.models
    ]
    assert all(m > 0 for m in moved), moved
    # ... and the ensemble artifact rebuilds them: the same functions.
    save_ensemble(ruc, base.model, spec, tmp_path / "refined_ensemble.safetensors")
    nets = load_ensemble(tmp_path / "refined_ensemble.safetensors")
    assert len(nets) == len(ruc.models) == 2
    for rebuilt, trained in zip(nets, ruc.models, strict=True):
        assert rebuilt.backbone.config == model.backbone.config  # type: ignore[union-attr]
        assert torch.allclose(predict_probs(rebuilt, x), predict_probs(trained.cpu(), x), atol=1e-6)
    print(f"ViT at 16 px: base {based - start:.1f} s, RUC epoch {refined - based:.1f} s")
