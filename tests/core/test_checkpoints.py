"""Checkpoint loading: SCAN/SimCLR/self-label files load into our models and compute the same outputs
as SCAN's own model definitions; unsafe, corrupt or mismatching files are refused by name."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from scan_reference import (
    ScanClusteringModel,
    ScanContrastiveModel,
    randomise_bn,
    scan_resnet18,
)
from torch import nn

from core.errors import CoreInputError
from core.models import (
    ClusteringModel,
    EmbeddingModel,
    build_backbone,
    inspect_checkpoint,
    load_clustering_model,
    load_embedding_model,
    save_safetensors,
)

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: thread start-up costs more than it saves, and the test machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scan_input(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def scan_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    simclr = ScanContrastiveModel(scan_resnet18(), features_dim=128)
    scan = ScanClusteringModel(scan_resnet18(), nclusters=10, nheads=10)
    selflabel = ScanClusteringModel(scan_resnet18(), nclusters=10, nheads=1)
    for m in (simclr, scan, selflabel):
        randomise_bn(m)
        m.eval()
    return {"simclr": simclr, "scan": scan, "selflabel": selflabel}


def _prefixed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in sd.items()}


# --------------------------------------------------------------------------------------- SCAN files


@pytest.mark.parametrize("dataparallel", [False, True])
def test_simclr_checkpoint_matches_scan_model(tmp_path: Path, scan_models: dict, dataparallel: bool) -> None:
    ref = scan_models["simclr"]
    sd = ref.state_dict()
    path = tmp_path / "simclr_cifar-10.pth.tar"
    torch.save(_prefixed(sd) if dataparallel else sd, path)
    info = inspect_checkpoint(path)
    assert (info.kind, info.backbone, info.features_dim, info.in_channels) == (
        "embedding",
        "resnet18_cifar",
        128,
        3,
    )
    ours = load_embedding_model(path, backbone="resnet18_cifar", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert isinstance(ours, EmbeddingModel) and not ours.training
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(_scan_input(x)), atol=1e-5)


@pytest.mark.parametrize("dataparallel", [False, True])
def test_scan_checkpoint_uses_the_files_head(tmp_path: Path, scan_models: dict, dataparallel: bool) -> None:
    ref = scan_models["scan"]
    sd = ref.state_dict()
    path = tmp_path / "scan_cifar-10.pth.tar"
    torch.save({"model": _prefixed(sd) if dataparallel else sd, "head": 2}, path)
    info = inspect_checkpoint(path)
    assert (info.kind, info.backbone, info.num_clusters, info.nheads, info.head) == (
        "clustering",
        "resnet18_cifar",
        10,
        10,
        2,
    )
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref(_scan_input(x))
        ours = load_clustering_model(
            path, num_clusters=10, head=None, backbone="resnet18_cifar", mean=CIFAR_MEAN, std=CIFAR_STD
        )
        assert ours.nheads == 1 and len(ours.cluster_head) == 1
        assert torch.allclose(ours(x), expected[2], atol=1e-5)
        assert not torch.allclose(ours(x), expected[0], atol=1e-3)
        # The job's head overrides the file's.
        ours7 = load_clustering_model(
            path, num_clusters=None, head=7, backbone=None, mean=CIFAR_MEAN, std=CIFAR_STD
        )
        assert torch.allclose(ours7(x), expected[7], atol=1e-5)


def test_selflabel_checkpoint_single_head(tmp_path: Path, scan_models: dict) -> None:
    ref = scan_models["selflabel"]
    path = tmp_path / "selflabel_cifar-10.pth.tar"
    torch.save(_prefixed(ref.state_dict()), path)
    ours = load_clustering_model(
        path, num_clusters=10, head=None, backbone=None, mean=CIFAR_MEAN, std=CIFAR_STD
    )
    torch.manual_seed(2)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(_scan_input(x))[0], atol=1e-5)
        assert torch.allclose(ours.features(x), ref.backbone(_scan_input(x)), atol=1e-5)


def test_scan_training_checkpoint_with_optimizer_state(tmp_path: Path, scan_models: dict) -> None:
    """SCAN's resumable checkpoint.pth.tar: {'optimizer', 'model', 'head', 'epoch'}."""
    ref = scan_models["scan"]
    opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
    ref(torch.zeros(1, 3, 32, 32))[0].sum().backward()
    opt.step()
    opt.zero_grad()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"optimizer": opt.state_dict(), "model": ref.state_dict(), "head": 4, "epoch": 3}, path)
    assert inspect_checkpoint(path).head == 4


def test_wrapper_state_dict_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=1)
    model = ClusteringModel(net, dim, 4).eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "w.pth")
    loaded = load_clustering_model(tmp_path / "w.pth", num_clusters=4, head=None, backbone="small_cnn")
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "in_channels", "dim"),
    [
        ("resnet18", 3, 512),
        ("resnet34", 1, 512),
        ("resnet50", 3, 2048),
        ("small_cnn", 1, 128),
        ("resnet18_cifar", 1, 512),
    ],
)
def test_backbone_detection(tmp_path: Path, name: str, in_channels: int, dim: int) -> None:
    net, d = build_backbone(name, in_channels=in_channels)  # type: ignore[arg-type]
    torch.save(ClusteringModel(net, d, 7, nheads=2).state_dict(), tmp_path / "c.pt")
    info = inspect_checkpoint(tmp_path / "c.pt")
    assert (info.backbone, info.in_channels, info.backbone_dim, info.num_clusters, info.nheads) == (
        name,
        in_channels,
        dim,
        7,
        2,
    )


# ------------------------------------------------------------------------------------------ errors


def test_mismatch_with_the_job(tmp_path: Path, scan_models: dict) -> None:
    path = tmp_path / "scan.pth.tar"
    torch.save({"model": scan_models["scan"].state_dict(), "head": 0}, path)
    with pytest.raises(
        CoreInputError, match=r"num_clusters: the job expects 5 clusters but the checkpoint's heads have 10"
    ):
        load_clustering_model(path, num_clusters=5, head=None, backbone=None)
    with pytest.raises(
        CoreInputError,
        match=r"backbone: the job expects 'resnet18' but the checkpoint holds 'resnet18_cifar'",
    ):
        load_clustering_model(path, num_clusters=10, head=None, backbone="resnet18")
    with pytest.raises(
        CoreInputError, match=r"head: head 10 is out of range: the checkpoint has 10 head\(s\) \(0\.\.9\)"
    ):
        load_clustering_model(path, num_clusters=10, head=10, backbone=None)
    with pytest.raises(
        CoreInputError, match=r"checkpoint: is a clustering model .* embedding model .* is needed"
    ):
        load_embedding_model(path)


def test_embedding_file_is_not_a_clustering_model(tmp_path: Path, scan_models: dict) -> None:
    torch.save(scan_models["simclr"].state_dict(), tmp_path / "simclr.pth.tar")
    with pytest.raises(
        CoreInputError, match=r"checkpoint: is an embedding model .* clustering model .* is needed"
    ):
        load_clustering_model(tmp_path / "simclr.pth.tar", num_clusters=None, head=None, backbone=None)


def test_file_head_out_of_range_or_not_an_int(tmp_path: Path) -> None:
    net, dim = build_backbone("small_cnn", in_channels=3)
    sd = ClusteringModel(net, dim, 3, nheads=3).state_dict()
    torch.save({"model": sd, "head": 5}, tmp_path / "a.pth")
    with pytest.raises(
        CoreInputError, match=r"checkpoint\.head: the file selects head 5, but it has 3 head\(s\)"
    ):
        inspect_checkpoint(tmp_path / "a.pth")
    torch.save({"model": sd, "head": "best"}, tmp_path / "b.pth")
    with pytest.raises(CoreInputError, match=r"checkpoint\.head: must be an integer head index, got 'best'"):
        inspect_checkpoint(tmp_path / "b.pth")


def _small_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=3)
    return ClusteringModel(net, dim, 3).state_dict()


def test_missing_unexpected_and_wrong_shape_keys_are_named(tmp_path: Path) -> None:
    sd = _small_sd()
    missing = {k: v for k, v in sd.items() if not k.startswith("backbone.blocks.1.")}
    torch.save(missing, tmp_path / "m.pt")
    with pytest.raises(
        CoreInputError,
        match=r"missing 5 key\(s\): backbone\.blocks\.1\.conv\.weight, backbone\.blocks\.1\.bn",
    ):
        load_clustering_model(tmp_path / "m.pt", num_clusters=None, head=None, backbone=None)
    extra = sd | {f"backbone.extra.{i}.weight": torch.zeros(1) for i in range(7)}
    torch.save(extra, tmp_path / "u.pt")
    with pytest.raises(
        CoreInputError, match=r"unexpected 7 key\(s\): backbone\.extra\.0\.weight.*\(\+2 more\)"
    ):
        load_clustering_model(tmp_path / "u.pt", num_clusters=None, head=None, backbone=None)
    wrong = dict(sd)
    wrong["backbone.blocks.1.conv.weight"] = torch.zeros(64, 32, 5, 5)
    torch.save(wrong, tmp_path / "w.pt")
    with pytest.raises(
        CoreInputError,
        match=r"wrong shape for 1 key\(s\): backbone\.blocks\.1\.conv\.weight \(64, 32, 5, 5\) "
        r"\(expected \(64, 32, 3, 3\)\)",
    ):
        load_clustering_model(tmp_path / "w.pt", num_clusters=None, head=None, backbone=None)


def test_head_of_wrong_width_for_backbone(tmp_path: Path) -> None:
    sd = _small_sd()
    sd["cluster_head.0.weight"] = torch.zeros(3, 512)
    torch.save(sd, tmp_path / "h.pt")
    with pytest.raises(
        CoreInputError, match=r"checkpoint:cluster_head\.0\.weight: expected shape \(num_clusters, 128\)"
    ):
        inspect_checkpoint(tmp_path / "h.pt")


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    sd = {k: v for k, v in _small_sd().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pt")
    assert (
        load_clustering_model(tmp_path / "old.pt", num_clusters=3, head=None, backbone=None).num_clusters == 3
    )


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    sd = _small_sd()
    sd["cluster_head.0.bias"] = torch.tensor([0.0, float("nan"), 1.0])
    torch.save(sd, tmp_path / "n.pt")
    with pytest.raises(CoreInputError, match=r"checkpoint:cluster_head\.0\.bias: contains NaN or infinite"):
        load_clustering_model(tmp_path / "n.pt", num_clusters=None, head=None, backbone=None)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([torch.zeros(2)], r"checkpoint: top-level object is a list; expected a state dict"),
        (torch.zeros(3), r"checkpoint: top-level object is a Tensor"),
        ({}, r"checkpoint: the state dict is empty"),
        (
            {"backbone.conv1.weight": torch.zeros(64, 3, 3, 3), "note": "hi"},
            r"entries that are not named tensors: 1 key\(s\): note",
        ),
        ({"conv1.weight": torch.zeros(64, 3, 3, 3)}, r"no backbone\.\* keys"),
        (
            {"backbone.conv1.weight": torch.zeros(64, 3, 3, 3)},
            r"neither cluster_head\.\* .* nor contrastive_head\.\*",
        ),
        (
            {"backbone.fc.weight": torch.zeros(2, 2), "cluster_head.0.weight": torch.zeros(2, 2)},
            r"unrecognised backbone",
        ),
    ],
)
def test_unusable_contents(tmp_path: Path, obj: object, match: str) -> None:
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CoreInputError, match=match):
        inspect_checkpoint(tmp_path / "x.pt")


def test_unsupported_resnet_depth(tmp_path: Path) -> None:
    sd = {k: v for k, v in _resnet_cifar_sd().items() if not k.startswith("backbone.layer3.1.")}
    torch.save(sd, tmp_path / "d.pt")
    with pytest.raises(
        CoreInputError, match=r"unsupported ResNet: 3x3 stem with blocks per stage \(2, 2, 1, 2\)"
    ):
        inspect_checkpoint(tmp_path / "d.pt")


def _resnet_cifar_sd() -> dict[str, torch.Tensor]:
    net, dim = build_backbone("resnet18_cifar", in_channels=3)
    return ClusteringModel(net, dim, 3).state_dict()


class _Payload:
    """Unpickling this calls builtins.open(marker, 'w'): it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_code_executing_pickle_is_refused_without_running(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "scan_evil.pth.tar"
    payload = {"model": {"backbone.conv1.weight": _Payload(marker)}, "head": 0}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    for call in (
        lambda: inspect_checkpoint(path),
        lambda: load_clustering_model(path, num_clusters=None, head=None, backbone=None),
        lambda: load_embedding_model(path),
    ):
        with pytest.raises(
            CoreInputError,
            match=r"checkpoint: refused: the file references the Python object io\.open, which could run",
        ):
            call()
    assert not marker.exists()
    # The payload is real: an unrestricted load runs it (proves the test above could fail).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_garbage_and_truncated_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (tmp_path / "g.pt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CoreInputError, match=r"checkpoint: not a (valid|readable) PyTorch checkpoint"):
        inspect_checkpoint(tmp_path / "g.pt")
    torch.save(_small_sd(), tmp_path / "ok.pt")
    blob = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        CoreInputError, match=r"checkpoint: not a readable PyTorch checkpoint \(corrupt or truncated\?\)"
    ):
        inspect_checkpoint(tmp_path / "t.pt")
    (tmp_path / "g.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"\0" * 32)
    with pytest.raises(CoreInputError, match=r"checkpoint: not a readable safetensors file"):
        inspect_checkpoint(tmp_path / "g.safetensors")
    with pytest.raises(CoreInputError, match=r"checkpoint: file not found"):
        inspect_checkpoint(tmp_path / "none.pt")


# ------------------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_clustering(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, dim = build_backbone("resnet18_cifar", in_channels=3)
    model = ClusteringModel(net, dim, 6, nheads=2, mean=CIFAR_MEAN, std=CIFAR_STD)
    randomise_bn(model)
    model.active_head = 1
    model.eval()
    path = tmp_path / "out" / "model.safetensors"
    save_safetensors(model, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert (meta["kind"], meta["backbone"], meta["num_clusters"], meta["nheads"], meta["head"]) == (
        "clustering",
        "resnet18_cifar",
        "6",
        "2",
        "1",
    )
    assert json.loads(meta["mean"]) == pytest.approx(CIFAR_MEAN)
    info = inspect_checkpoint(path)
    assert (info.head, info.nheads, info.mean) == (1, 2, pytest.approx(tuple(CIFAR_MEAN)))
    loaded = load_clustering_model(path, num_clusters=6, head=None, backbone="resnet18_cifar")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # same weights, same normalisation from metadata
    # Also readable under an unknown suffix (storage keys): the format is sniffed.
    path.rename(tmp_path / "blob.bin")
    assert inspect_checkpoint(tmp_path / "blob.bin").kind == "clustering"


def test_safetensors_round_trip_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=1)
    model = EmbeddingModel(net, dim, features_dim=16).eval()
    save_safetensors(model, tmp_path / "e.safetensors")
    loaded = load_embedding_model(tmp_path / "e.safetensors", backbone="small_cnn")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert inspect_checkpoint(tmp_path / "e.safetensors").to_dict()["features_dim"] == 16


def test_safetensors_metadata_contradicting_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(dict(_small_sd()), str(tmp_path / "x.safetensors"), metadata={"backbone": "resnet50"})
    with pytest.raises(
        CoreInputError, match=r"checkpoint\.metadata\.backbone: says 'resnet50' but the tensors"
    ):
        inspect_checkpoint(tmp_path / "x.safetensors")
