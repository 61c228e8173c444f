"""Conv + BatchNorm folding (core.models.folding): the label-guessing forwards' copy equals the network."""

from __future__ import annotations

import pytest
import torch

from core.models import BACKBONE_NAMES, ClusteringModel, build_backbone
from core.models.folding import fold_batchnorm


@pytest.mark.parametrize(
    ("name", "channels_last"),
    [(name, False) for name in BACKBONE_NAMES] + [("resnet18_cifar", True), ("small_cnn", True)],
)
def test_folded_copy_predicts_what_the_network_predicts(name: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    backbone, dim = build_backbone(name, in_channels=3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = ClusteringModel(backbone, dim, 10).to(memory_format=fmt)
    side = 96 if name == "resnet18_stl" else 32
    x = torch.rand(6, 3, side, side).contiguous(memory_format=fmt)
    with torch.no_grad():  # running statistics far from their initial (0, 1)
        net.train()
        net(x * 3 + 1)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        p, q = torch.softmax(net(x), 1), torch.softmax(folded(x), 1)
    assert (p - q).abs().max().item() < 1e-4
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # original untouched
    assert not any(p.requires_grad for p in folded.parameters())
