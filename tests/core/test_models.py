"""Backbones and the SCAN-layout clustering/embedding models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from core.errors import CoreInputError
from core.models import (
    BACKBONE_NAMES,
    ClusteringModel,
    EmbeddingModel,
    build_backbone,
    check_input_size,
    default_backbone_for,
)
from core.models.backbones import scan_variant_for


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: thread start-up costs more than it saves, and the test machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_backbone_output_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    net, dim = build_backbone(name, in_channels=in_channels)  # type: ignore[arg-type]
    side = {"small_cnn": 8, "resnet18_stl": 96}.get(name, 32)
    out = net.eval()(torch.randn(2, in_channels, side, side))
    assert out.shape == (2, dim)
    assert dim == {"resnet50": 2048, "small_cnn": 128}.get(name, 512)
    assert (net.backbone_name, net.in_channels) == (name, in_channels)


def test_resnet18_cifar_has_scan_key_layout() -> None:
    net, _ = build_backbone("resnet18_cifar", in_channels=3)
    sd = net.state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)  # 3x3 stride-1 stem
    assert not any(k.startswith(("fc.", "maxpool", "linear")) for k in sd)
    assert net.conv1.stride == (1, 1)
    for layer, planes in ((2, 128), (3, 256), (4, 512)):
        assert sd[f"layer{layer}.0.shortcut.0.weight"].shape == (planes, planes // 2, 1, 1)
        assert f"layer{layer}.0.shortcut.1.running_var" in sd
        assert f"layer{layer}.1.shortcut.0.weight" not in sd
    assert "layer1.0.shortcut.0.weight" not in sd  # no downsampling in layer1
    assert {k.split(".")[2] for k in sd if k.startswith("layer1.0.")} == {"conv1", "bn1", "conv2", "bn2"}
    # 32x32 input keeps 4x4 maps at layer4: no max-pool, three stride-2 stages.
    shapes: list[tuple[int, ...]] = []
    net.layer4.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)) and None)
    net(torch.zeros(1, 3, 32, 32))
    assert shapes == [(1, 512, 4, 4)]


def test_resnet18_stl_shares_cifar_parameters_but_pools_like_scans_stl_model() -> None:
    """Same state dict as resnet18_cifar; 96 px -> 49 px after the max-pool -> 7x7 at layer4."""
    torch.manual_seed(0)
    stl, _ = build_backbone("resnet18_stl", in_channels=3)
    cifar, _ = build_backbone("resnet18_cifar", in_channels=3)
    assert {k: v.shape for k, v in stl.state_dict().items()} == {
        k: v.shape for k, v in cifar.state_dict().items()
    }
    shapes: list[tuple[int, ...]] = []
    stl.layer1.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)) and None)
    stl.layer4.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)) and None)
    assert stl.eval()(torch.rand(1, 3, 111, 96)).shape == (1, 512)
    assert shapes == [(1, 64, 56, 49), (1, 512, 7, 7)]
    with pytest.raises(
        CoreInputError, match=r"images: resnet18_stl .* needs images of 96-111 px a side; got 95x96"
    ):
        stl(torch.rand(1, 3, 95, 96))


@pytest.mark.parametrize(
    ("h", "w", "ok"), [(96, 96, True), (111, 100, True), (95, 96, False), (112, 112, False), (32, 32, False)]
)
def test_stl_input_size_and_image_size_default(h: int, w: int, ok: bool) -> None:
    variants = ("resnet18_cifar", "resnet18_stl")
    assert scan_variant_for(variants, h, w) == ("resnet18_stl" if ok else "resnet18_cifar")
    check_input_size("resnet18_cifar", height=h, width=w, field="f")
    if ok:
        check_input_size("resnet18_stl", height=h, width=w, field="f")
    else:
        with pytest.raises(CoreInputError, match=rf"base\.backbone: .* got {h}x{w}"):
            check_input_size("resnet18_stl", height=h, width=w, field="base.backbone")


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_backbones_match_torchvision_keys(name: str) -> None:
    ours, _ = build_backbone(name, in_channels=3)  # type: ignore[arg-type]
    ref = getattr(torchvision.models, name)(weights=None).state_dict()
    expected = {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


def test_one_channel_torchvision_stem() -> None:
    net, _ = build_backbone("resnet18", in_channels=1)
    assert net.state_dict()["conv1.weight"].shape == (64, 1, 7, 7)


def test_bad_backbone_arguments() -> None:
    with pytest.raises(CoreInputError, match=r"in_channels: must be 1 or 3, got 2"):
        build_backbone("small_cnn", in_channels=2)
    with pytest.raises(CoreInputError, match=r"backbone: unknown backbone 'vgg'"):
        build_backbone("vgg", in_channels=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("h", "w", "name"),
    [
        (8, 8, "small_cnn"),
        (16, 12, "small_cnn"),
        (28, 28, "resnet18_cifar"),
        (64, 64, "resnet18_cifar"),
        (96, 96, "resnet18"),
    ],
)
def test_default_backbone_for(h: int, w: int, name: str) -> None:
    assert default_backbone_for(h, w) == name


def test_clustering_model_forward_heads_and_normalisation() -> None:
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=3)
    model = ClusteringModel(net, dim, 5, nheads=3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]).eval()
    x = torch.rand(4, 3, 8, 8)
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    feats = net((x - mean) / std)
    assert torch.allclose(model.features(x), feats, atol=1e-6)
    assert torch.allclose(model(x), model.cluster_head[0](feats), atol=1e-6)
    model.active_head = 2
    assert torch.allclose(model(x), model.cluster_head[2](feats), atol=1e-6)
    assert torch.allclose(model.head_logits(feats), model(x), atol=1e-6)
    assert [t.shape for t in model.all_head_logits(x)] == [(4, 5)] * 3
    keys = set(model.state_dict())
    assert "mean" not in keys and "std" not in keys  # normalisation stays out of SCAN's key layout
    assert {"cluster_head.0.weight", "cluster_head.2.bias", "backbone.blocks.0.conv.weight"} <= keys
    assert model.backbone_name == "small_cnn" and isinstance(model.cluster_head, nn.ModuleList)


def test_default_normalisation_is_half_quarter() -> None:
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=1)
    model = ClusteringModel(net, dim, 3).eval()
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(model.features(x), net((x - 0.5) / 0.25), atol=1e-6)


def test_bad_normalisation_and_sizes() -> None:
    net, dim = build_backbone("small_cnn", in_channels=3)
    with pytest.raises(CoreInputError, match=r"std: must be positive"):
        ClusteringModel(net, dim, 3, std=[0.2, 0.0, 0.2])
    with pytest.raises(CoreInputError, match=r"mean: must be 1 or 3 finite values"):
        ClusteringModel(net, dim, 3, mean=[0.1, 0.2])
    with pytest.raises(CoreInputError, match=r"nheads: must be >= 1"):
        ClusteringModel(net, dim, 3, nheads=0)


def test_embedding_model_is_scan_mlp_and_unit_norm() -> None:
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=3)
    model = EmbeddingModel(net, dim, features_dim=32).eval()
    x = torch.rand(3, 3, 8, 8)
    out = model(x)
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    head = model.contrastive_head
    assert (
        isinstance(head[0], nn.Linear) and isinstance(head[1], nn.ReLU) and head[2].weight.shape == (32, dim)
    )
    assert torch.allclose(out, F.normalize(head(net((x - 0.5) / 0.25)), dim=1), atol=1e-6)


def test_small_cnn_is_small_and_learns_on_cpu() -> None:
    """small_cnn is the CPU demo backbone: under 100k parameters and it fits a toy task in 30 steps."""
    torch.manual_seed(0)
    net, dim = build_backbone("small_cnn", in_channels=1)
    assert sum(p.numel() for p in net.parameters()) < 100_000
    model = ClusteringModel(net, dim, 2)
    x = torch.rand(64, 1, 8, 8) * 0.5
    y = torch.arange(64) % 2
    x[y == 1, :, :4] += 0.5  # class 1: bright top half
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 < losses[0]
