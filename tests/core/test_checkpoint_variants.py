"""SCAN's CIFAR and STL-10 ResNet-18s (identical weights, different pooling) and input normalisation:
each file computes SCAN's function under the variant and statistics the job resolves, and the result
says which were used and why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scan_reference import ScanClusteringModel, randomise_bn, scan_resnet18, scan_resnet18_stl
from torch import nn

from core.clustering.base import run_base
from core.datasets import ImageDataset
from core.errors import CoreInputError
from core.models import (
    ClusteringModel,
    build_backbone,
    image_statistics,
    inspect_checkpoint,
    load_clustering_model,
    parse_statement,
    read_statement,
    save_safetensors,
    write_statement,
)
from core.models import normalisation as normalisation_module
from core.spec import JobSpec
from core.spec.common import NORMALISATION_PRESETS

K = 10
HEAD = 1


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scan_file(path: Path, layout: str, seed: int = 0) -> nn.Module:
    """A SCAN-layout clustering checkpoint ({'model', 'head'}) written by the reference classes."""
    torch.manual_seed(seed)
    backbone = scan_resnet18_stl() if layout == "stl" else scan_resnet18()
    ref = ScanClusteringModel(backbone, nclusters=K, nheads=3)
    randomise_bn(ref)
    ref.eval()
    torch.save({"model": ref.state_dict(), "head": HEAD}, path)
    return ref


def _images(side: int, n: int = K, channels: int = 3, seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    return ImageDataset(
        images=torch.randint(0, 256, (n, side, side, channels), dtype=torch.uint8, generator=gen)
    )


def _spec(**base: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset_id": "ds",
            "num_clusters": K,
            "base": {"method": "checkpoint", "clustering_checkpoint_id": "ck", **base},
        }
    )


def _reference_logits(ref: nn.Module, x01: torch.Tensor, preset: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALISATION_PRESETS[preset])
    with torch.no_grad():
        return ref((x01 - mean) / std)[HEAD]


@pytest.mark.parametrize(("layout", "side", "preset"), [("cifar", 32, "cifar10"), ("stl", 96, "stl10")])
def test_scan_layout_computes_scans_function(tmp_path: Path, layout: str, side: int, preset: str) -> None:
    """Through the base stage, with the image-size default and the stated preset: max |logit
    difference| < 1e-5 in fp32 against the independent definition of SCAN's class."""
    ref = _scan_file(tmp_path / "scan.pth.tar", layout)
    ds = _images(side)
    out = run_base(
        _spec(normalisation=preset), ds, device="cpu", checkpoint_paths={"ck": tmp_path / "scan.pth.tar"}
    )
    x01 = ds.to_float("cpu")
    with torch.no_grad():
        diff = (out.model(x01) - _reference_logits(ref, x01, preset)).abs().max().item()
    print(f"{layout}: max |logit diff| vs SCAN's definition = {diff:.2e}")
    assert diff < 1e-5
    report = out.info["checkpoint"]
    assert report["backbone"] == f"resnet18_{layout}" and report["backbone_decided_by"] == "image_size"
    assert report["backbone_candidates"] == ["resnet18_cifar", "resnet18_stl"]
    assert out.info["normalisation"] == {
        "mean": list(NORMALISATION_PRESETS[preset][0]),
        "std": list(NORMALISATION_PRESETS[preset][1]),
        "source": "spec",
        "preset": preset,
    }
    assert out.info["backbone"] == f"resnet18_{layout}"


def test_stl_file_read_as_cifar_computes_another_function(tmp_path: Path) -> None:
    """The bug this layout fixes: the same STL weights in the CIFAR layout give features whose
    per-image variation barely agrees with SCAN's (batch-centred cosine 0.11 here; the raw cosine,
    0.998, hides it because both are means of non-negative maps)."""
    ref = _scan_file(tmp_path / "stl.pth", "stl")
    torch.manual_seed(3)
    x = torch.rand(8, 3, 96, 96)
    with torch.no_grad():
        want = ref.backbone(x)
        feats = {
            name: load_clustering_model(
                tmp_path / "stl.pth", num_clusters=K, head=None, backbone=name, mean=0.0, std=1.0
            ).features(x)
            for name in ("resnet18_cifar", "resnet18_stl")
        }
    centred = {
        n: F.cosine_similarity(f - f.mean(0), want - want.mean(0)).mean().item() for n, f in feats.items()
    }
    maxabs = {n: (f - want).abs().max().item() for n, f in feats.items()}
    print(f"batch-centred cosine to SCAN's STL features: {centred}; max abs difference: {maxabs}")
    assert centred["resnet18_cifar"] < 0.5 and maxabs["resnet18_cifar"] > 1e-2
    assert maxabs["resnet18_stl"] < 1e-5


def test_backbone_precedence_spec_over_upload_over_image_size(tmp_path: Path) -> None:
    path = tmp_path / "scan.pth"
    _scan_file(path, "cifar")
    ds = _images(96)

    def decided(**base: Any) -> tuple[str, str]:
        out = run_base(
            _spec(normalisation="imagenet", **base), ds, device="cpu", checkpoint_paths={"ck": path}
        )
        return out.info["checkpoint"]["backbone"], out.info["checkpoint"]["backbone_decided_by"]

    assert decided() == ("resnet18_stl", "image_size")
    write_statement(path, parse_statement({"backbone": "resnet18_cifar"}))
    assert inspect_checkpoint(path, statement=read_statement(path)).backbone_source == "upload"
    assert decided() == ("resnet18_cifar", "upload")
    assert decided(backbone="resnet18_stl") == ("resnet18_stl", "spec")
    with pytest.raises(
        CoreInputError, match=r"base\.backbone: the job expects 'resnet18' but the checkpoint holds"
    ):
        decided(backbone="resnet18")
    # The STL layout is defined only for 96-111 px images; the field that chose it is named.
    with pytest.raises(CoreInputError, match=r"base\.backbone: resnet18_stl .* got 32x32"):
        run_base(_spec(backbone="resnet18_stl"), _images(32), device="cpu", checkpoint_paths={"ck": path})


def _save_small(path: Path, channels: int = 1, **stats: Any) -> None:
    torch.manual_seed(0)
    bb, dim = build_backbone("small_cnn", in_channels=channels)
    save_safetensors(ClusteringModel(bb, dim, K, **stats).eval(), path)


def test_normalisation_precedence_spec_upload_metadata_dataset(tmp_path: Path) -> None:
    ds = _images(8, n=20, channels=1)
    plain, meta = tmp_path / "plain.pt", tmp_path / "meta.safetensors"
    torch.manual_seed(0)
    bb, dim = build_backbone("small_cnn", in_channels=1)
    torch.save(ClusteringModel(bb, dim, K).state_dict(), plain)
    _save_small(meta, mean=[0.3], std=[0.2])

    def used(path: Path, **base: Any) -> tuple[dict[str, Any], torch.Tensor]:
        out = run_base(_spec(**base), ds, device="cpu", checkpoint_paths={"ck": path})
        return out.info["normalisation"], out.model.mean.flatten()

    pixels = ds.images.numpy().astype(np.float64) / 255
    norm, applied = used(plain)
    assert (norm["source"], norm["preset"]) == ("dataset", "dataset")
    assert norm["mean"] == pytest.approx([pixels.mean()], abs=1e-9)
    assert norm["std"] == pytest.approx([pixels.std()], abs=1e-9)
    assert applied.tolist() == pytest.approx(norm["mean"], abs=1e-6)
    norm, _ = used(meta)
    assert norm["source"] == "checkpoint_metadata"
    assert (norm["mean"], norm["std"]) == (pytest.approx([0.3]), pytest.approx([0.2]))
    write_statement(meta, parse_statement({"mean": "0.45", "std": "[0.3]"}))
    norm, applied = used(meta)
    assert (norm["source"], norm["mean"], norm["std"]) == ("upload", [0.45], [0.3])
    assert applied.tolist() == pytest.approx([0.45])
    norm, _ = used(meta, normalisation={"mean": [0.1], "std": [0.5]})
    assert (norm["source"], norm["mean"], norm["std"]) == ("spec", [0.1], [0.5])
    norm, _ = used(meta, normalisation="dataset")
    assert (norm["source"], norm["preset"], norm["mean"]) == (
        "spec",
        "dataset",
        pytest.approx([pixels.mean()]),
    )
    with pytest.raises(
        CoreInputError, match=r"base\.normalisation\.preset: 'cifar10' has 3 channels but the images have 1"
    ):
        used(plain, normalisation="cifar10")
    with pytest.raises(CoreInputError, match=r"base\.normalisation\.mean: must have 1 value\(s\), got 3"):
        used(plain, normalisation={"mean": [0.1, 0.2, 0.3], "std": [0.5]})


def test_fresh_base_network_uses_dataset_statistics_or_the_spec() -> None:
    ds = _images(8, n=24, channels=3)
    spec = {"dataset_id": "ds", "num_clusters": 3, "base": {"backbone": "small_cnn", "fit_epochs": 1}}
    out = run_base(JobSpec.model_validate(spec), ds, device="cpu")
    pixels = ds.images.numpy().astype(np.float64) / 255
    assert out.info["normalisation"]["source"] == "dataset"
    assert out.model.mean.flatten().tolist() == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-6)
    assert out.model.std.flatten().tolist() == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-6)
    spec["base"]["normalisation"] = "cifar20"  # type: ignore[index]
    out = run_base(JobSpec.model_validate(spec), ds, device="cpu")
    assert out.info["normalisation"]["source"] == "spec"
    assert out.model.std.flatten().tolist() == pytest.approx(list(NORMALISATION_PRESETS["cifar20"][1]))


def test_dataset_statistics_are_exact_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(5, n=11, channels=3, seed=4).images
    monkeypatch.setattr(normalisation_module, "STATS_CHUNK_IMAGES", 4)  # 3 chunks, the last partial
    mean, std = image_statistics(images, channels_last=True)
    pixels = images.numpy().astype(np.float64) / 255
    assert mean == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-12)
    same = image_statistics(images.permute(0, 3, 1, 2).float() / 255, channels_last=False)
    assert same[0] == pytest.approx(mean, abs=1e-6)
    # A constant channel gets std MIN_STD, not 0.
    assert image_statistics(torch.zeros(2, 3, 3, 1, dtype=torch.uint8), channels_last=True)[1] == (1e-3,)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"mean": "[Infinity]", "std": "[0.2]"}, "checkpoint.metadata.mean"),
        ({"mean": "[NaN]", "std": "[0.2]"}, "checkpoint.metadata.mean"),
        ({"mean": "[0.5]", "std": "[-Infinity]"}, "checkpoint.metadata.std"),
        ({"mean": "[0.5]", "std": "[0]"}, "checkpoint.metadata.std"),
        ({"mean": "[0.5, 0.5, 0.5]", "std": "[0.2]"}, "checkpoint.metadata.mean"),
        ({"mean": "0.5", "std": "[0.2]"}, "checkpoint.metadata.mean"),
        ({"mean": "[0.5]"}, "checkpoint.metadata.std"),
    ],
)
def test_bad_metadata_statistics_are_refused(tmp_path: Path, metadata: dict[str, str], field: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    bb, dim = build_backbone("small_cnn", in_channels=1)
    save_file(ClusteringModel(bb, dim, 2).state_dict(), str(tmp_path / "m.safetensors"), metadata=metadata)
    with pytest.raises(CoreInputError) as err:
        inspect_checkpoint(tmp_path / "m.safetensors")
    assert err.value.field == field, err.value


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        ({"backbone": "vgg16"}, "backbone", "unknown backbone 'vgg16'"),
        ({"normalisation": "cifar100"}, "normalisation", "Input should be 'cifar10'"),
        ({"mean": "a,b", "std": "0.2"}, "mean", "expected comma-separated numbers"),
        ({"mean": "inf", "std": "0.2"}, "mean", "finite number"),
        ({"mean": "0.5", "std": "nan"}, "std", "finite number"),
        ({"mean": "0.5", "std": "0"}, "std", "must be > 0"),
        ({"mean": "0.5,0.5", "std": "0.2"}, "mean", "must have 1 or 3 values"),
        ({"mean": "0.5"}, "normalisation", "give a preset, or both mean and std"),
        ({"normalisation": "cifar10", "mean": "0.5", "std": "0.2"}, "normalisation", "not both"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_upload_statements_name_the_field(raw: dict[str, str], field: str, problem: str) -> None:
    with pytest.raises(CoreInputError) as err:
        parse_statement(raw)
    assert err.value.field == field and problem in err.value.problem, err.value


def test_statements_that_contradict_the_file(tmp_path: Path) -> None:
    _save_small(tmp_path / "grey.safetensors")
    cases = [
        ({"backbone": "resnet18_stl"}, "backbone", "the weights are a small_cnn model"),
        ({"normalisation": "stl10"}, "normalisation.preset", "has 3 channels but the images have 1"),
        ({"mean": "0.5,0.5,0.5", "std": "0.2"}, "normalisation.mean", "must have 1 value(s), got 3"),
    ]
    for raw, field, problem in cases:
        with pytest.raises(CoreInputError) as err:
            inspect_checkpoint(tmp_path / "grey.safetensors", statement=parse_statement(raw))
        assert err.value.field == field and problem in err.value.problem, (raw, err.value)
    # A statement that fits is reported as facts.
    info = inspect_checkpoint(
        tmp_path / "grey.safetensors", statement=parse_statement({"normalisation": "dataset"})
    )
    assert info.normalisation == {"preset": "dataset", "mean": None, "std": None, "source": "upload"}
    assert (info.backbone, info.backbone_source) == ("small_cnn", "metadata")
