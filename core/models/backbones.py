"""Feature extractors: (B, C, H, W) float -> (B, D) features.

Key layouts matter because uploaded checkpoints are loaded by name:

- ``resnet18_cifar`` follows SCAN's ``models/resnet_cifar.py`` (3x3 stride-1 stem, no max-pool,
  ``shortcut`` Sequential(conv, bn) on downsampling blocks), so SCAN's CIFAR checkpoints load as-is.
- ``resnet18_stl`` follows SCAN's ``models/resnet_stl.py``: the same parameters (so the two cannot be
  told apart from a state dict), plus a 2x2 stride-2 max-pool with padding 1 after the stem and a
  fixed 7x7 average pool at the end. That pool makes the layout defined only where layer4's map is
  7x7, i.e. for inputs of 96-111 px a side (STL-10 is 96 px).
- ``resnet18`` / ``resnet34`` / ``resnet50`` are torchvision's ResNets with ``fc`` removed, the layout
  of SCAN's ImageNet models and of most published ResNet weights.
- ``small_cnn`` is ours: three conv blocks for tiny images (8x8 digits, CPU demos).
- ``vit`` (core.models.vit) is built only with the architecture a checkpoint's tensors describe,
  never by name alone, so a job spec cannot ask for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreInputError
from core.models.vit import VisionTransformer, ViTConfig
from core.spec import BackboneName

BACKBONE_NAMES: tuple[BackboneName, ...] = get_args(BackboneName)
VIT: Literal["vit"] = "vit"
# Every backbone a model may carry: the named ones and a checkpoint's ViT.
ModelBackbone = BackboneName | Literal["vit"]
# Input sides (px) for which resnet18_stl's layer4 map is exactly 7x7, the window of its final pool.
STL_MIN_SIDE, STL_MAX_SIDE = 96, 111
_STL_POOL = 7


class BasicBlock(nn.Module):
    """SCAN/CIFAR ResNet basic block; ``shortcut`` is empty unless the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs overwrite tensors that no backward needs (BatchNorm saves its input, the
        # sum saves nothing), so a training forward allocates 2 fewer activation maps per block.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNetCifar(nn.Module):
    """ResNet for small images (CIFAR): 3x3 stride-1 stem, no max-pool. Output (B, 512)."""

    def __init__(self, num_blocks: tuple[int, int, int, int] = (2, 2, 2, 2), *, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised -> (B, 512)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.avgpool(out), 1)


class ResNetStl(ResNetCifar):
    """SCAN's STL-10 ResNet: the CIFAR layout's parameters, a max-pool after the stem and a fixed
    7x7 average pool. Input (B, C, H, W) with 96 <= H, W <= 111 -> (B, 512)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised -> (B, 512)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.max_pool2d(out, kernel_size=2, stride=2, padding=1)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if out.shape[-2:] != (_STL_POOL, _STL_POOL):
            raise CoreInputError("images", _stl_size_problem(x.shape[-2], x.shape[-1]))
        return torch.flatten(F.avg_pool2d(out, _STL_POOL, stride=1), 1)


def _stl_size_problem(height: int, width: int) -> str:
    return (
        f"resnet18_stl (SCAN's STL-10 layout, fixed 7x7 final pool) needs images of "
        f"{STL_MIN_SIDE}-{STL_MAX_SIDE} px a side; got {height}x{width}"
    )


def check_input_size(name: BackboneName, *, height: int, width: int, field: str) -> None:
    """Raise CoreInputError(field) when backbone ``name`` cannot take (height, width) images."""
    if name == "resnet18_stl" and not (
        STL_MIN_SIDE <= height <= STL_MAX_SIDE and STL_MIN_SIDE <= width <= STL_MAX_SIDE
    ):
        raise CoreInputError(field, _stl_size_problem(height, width))


def scan_variant_for(candidates: tuple[BackboneName, ...], height: int, width: int) -> BackboneName:
    """Pick among backbones with identical state dicts by image size, as SCAN picks by data set:
    the STL layout for images it can take (STL-10's 96 px), else the first candidate (CIFAR)."""
    if (
        "resnet18_stl" in candidates
        and STL_MIN_SIDE <= min(height, width) <= max(height, width) <= STL_MAX_SIDE
    ):
        return "resnet18_stl"
    return candidates[0]


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class SmallCNN(nn.Module):
    """Three conv blocks (32-64-128, BN, ReLU), 2x max-pool between blocks, global average pool.

    About 93k parameters: trains in seconds on CPU on 8x8 digits. Output (B, 128).
    """

    widths = (32, 64, 128)

    def __init__(self, *, in_channels: int = 3) -> None:
        super().__init__()
        chans = (in_channels, *self.widths)
        self.blocks = nn.ModuleList(_ConvBlock(chans[i], chans[i + 1]) for i in range(len(self.widths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised -> (B, 128)."""
        for i, block in enumerate(self.blocks):
            if i > 0:
                # ceil_mode keeps odd and 1-pixel maps alive (7x7 -> 4x4 -> 2x2) instead of failing.
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
        return x.mean(dim=(2, 3))


def _torchvision_resnet(name: str, in_channels: int) -> tuple[nn.Module, int]:
    # Imported here, not at the top: torchvision pulls in torch._dynamo and triton (about 180 MB
    # of resident memory and a second of start-up) that CIFAR-sized and tiny backbones never use.
    import torchvision

    # weights=None: never download; checkpoints are the client's to upload.
    net = getattr(torchvision.models, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net, dim


def build_backbone(
    name: ModelBackbone, *, in_channels: int, vit: ViTConfig | Mapping[str, Any] | None = None
) -> tuple[nn.Module, int]:
    """Build a freshly initialised backbone; returns (module, feature dim D).

    The module maps (B, in_channels, H, W) -> (B, D) and carries ``backbone_name`` and
    ``in_channels`` attributes (plain attributes, not in the state dict). ``vit``: the architecture
    of a ``vit`` backbone (a ViTConfig or its ``as_dict()``), required for it and only for it.
    """
    if in_channels not in (1, 3):
        raise CoreInputError("in_channels", f"must be 1 or 3, got {in_channels}")
    if (name == VIT) != (vit is not None):
        raise CoreInputError(
            "backbone", "a ViT is built from a checkpoint's architecture, and only a ViT takes one"
        )
    module: nn.Module
    if name == VIT:
        config = vit if isinstance(vit, ViTConfig) else ViTConfig.from_dict(vit)  # type: ignore[arg-type]
        if config.in_channels != in_channels:
            raise CoreInputError(
                "in_channels", f"the ViT takes {config.in_channels} channels, not {in_channels}"
            )
        module, dim = VisionTransformer(config), config.dim
    elif name == "resnet18_cifar":
        module, dim = ResNetCifar((2, 2, 2, 2), in_channels=in_channels), 512
    elif name == "resnet18_stl":
        module, dim = ResNetStl((2, 2, 2, 2), in_channels=in_channels), 512
    elif name in ("resnet18", "resnet34", "resnet50"):
        module, dim = _torchvision_resnet(name, in_channels)
    elif name == "small_cnn":
        module, dim = SmallCNN(in_channels=in_channels), SmallCNN.widths[-1]
    else:
        raise CoreInputError(
            "backbone", f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}"
        )
    module.backbone_name = name
    module.in_channels = in_channels
    return module, dim


def vit_config_of(module: nn.Module) -> dict[str, Any] | None:
    """A ViT backbone's architecture as a plain dict (what ``build_backbone(vit=...)`` takes), else None;
    what files that rebuild a model by name store beside the name."""
    return module.config.as_dict() if isinstance(module, VisionTransformer) else None


def default_backbone_for(height: int, width: int) -> BackboneName:
    """Backbone by image size: <= 16 px small_cnn, <= 64 px resnet18_cifar, else resnet18."""
    side = max(height, width)
    if side <= 16:
        return "small_cnn"
    if side <= 64:
        return "resnet18_cifar"
    return "resnet18"
