"""An independent re-implementation of SCAN's model code (models/resnet_cifar.py, models/resnet_stl.py,
models/models.py), written here so tests compare our loader against SCAN's definitions, not against
itself. Shared by the checkpoint tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ScanBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, is_last: bool = False) -> None:
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> Any:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        preact = out
        out = F.relu(out)
        return (out, preact) if self.is_last else out


class ScanResNet(nn.Module):
    def __init__(self, block: type[ScanBasicBlock], num_blocks: list[int], in_channel: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channel, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def _make_layer(
        self, block: type[ScanBasicBlock], planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for i in range(num_blocks):
            layers.append(block(self.in_planes, planes, strides[i]))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avgpool(out)
        return torch.flatten(out, 1)


def scan_resnet18(in_channel: int = 3) -> dict[str, Any]:
    return {"backbone": ScanResNet(ScanBasicBlock, [2, 2, 2, 2], in_channel), "dim": 512}


class ScanContrastiveModel(nn.Module):
    def __init__(self, backbone: dict[str, Any], head: str = "mlp", features_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone["backbone"]
        self.backbone_dim = backbone["dim"]
        self.head = head
        assert head == "mlp"
        self.contrastive_head = nn.Sequential(
            nn.Linear(self.backbone_dim, self.backbone_dim),
            nn.ReLU(),
            nn.Linear(self.backbone_dim, features_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.contrastive_head(self.backbone(x)), dim=1)


class ScanClusteringModel(nn.Module):
    def __init__(self, backbone: dict[str, Any], nclusters: int, nheads: int = 1) -> None:
        super().__init__()
        self.backbone = backbone["backbone"]
        self.backbone_dim = backbone["dim"]
        self.nheads = nheads
        self.cluster_head = nn.ModuleList(
            [nn.Linear(self.backbone_dim, nclusters) for _ in range(self.nheads)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(x)
        return [cluster_head(features) for cluster_head in self.cluster_head]


def randomise_bn(model: nn.Module) -> None:
    """Give BatchNorm non-trivial running statistics so eval-mode outputs depend on loading them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
            m.num_batches_tracked.fill_(7)


class ScanResNetStl(ScanResNet):
    """SCAN's models/resnet_stl.py: the CIFAR ResNet's parameters, a 2x2/2 max-pool with padding 1
    after the stem, and a fixed AvgPool2d(7, stride=1) at the end."""

    def __init__(self, block: type[ScanBasicBlock], num_blocks: list[int], in_channel: int = 3) -> None:
        super().__init__(block, num_blocks, in_channel)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1)
        self.avgpool = nn.AvgPool2d(7, stride=1)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avgpool(out)
        return torch.flatten(out, 1)


def scan_resnet18_stl(in_channel: int = 3) -> dict[str, Any]:
    return {"backbone": ScanResNetStl(ScanBasicBlock, [2, 2, 2, 2], in_channel), "dim": 512}
