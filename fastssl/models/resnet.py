"""ResNet encoders (He et al. 2016, "Deep Residual Learning for Image Recognition") without a classifier.

The encoder f maps images to the representation h that SimCLR keeps for evaluation, so `forward`
ends at the global average pool and `feature_dim` tells the projector its input width.
Stride-2 downsampling in a bottleneck sits on the 3x3 conv (the "v1.5" placement most SSL
baselines use; same parameter count as the paper's placement on the first 1x1).
"""
from __future__ import annotations

import torch
from torch import nn

BASE_WIDTHS = (64, 128, 256, 512)


def scaled_width(channels: int, width: float) -> int:
    """Channel count under the width multiplier; at least 1 so tiny test models stay valid."""
    return max(1, round(channels * width))


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when shapes match, else the paper's projection shortcut (option B: 1x1 conv + BN)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class ResidualBlock(nn.Module):
    """relu(residual(x) + shortcut(x)); subclasses build the residual branch, ending in a BN."""
    expansion: int  # output channels / planes

    def __init__(self, residual: nn.Sequential, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose gamma zero-init targets."""
        return self.residual[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (ResNet-18/34)."""
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__(nn.Sequential(
            conv3x3(in_ch, planes, stride), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            conv3x3(planes, planes), nn.BatchNorm2d(planes),
        ), in_ch, planes, stride)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4 (ResNet-50)."""
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        out_ch = planes * self.expansion
        super().__init__(nn.Sequential(
            conv1x1(in_ch, planes), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            conv3x3(planes, planes, stride), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            conv1x1(planes, out_ch), nn.BatchNorm2d(out_ch),
        ), in_ch, out_ch, stride)


# arch -> (block, blocks per stage), from Table 1 of the paper.
# One entry per name of config.Arch (a test checks the two agree).
ARCH_SPECS: dict[str, tuple[type[ResidualBlock], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def stem(out_ch: int, cifar_stem: bool) -> nn.Sequential:
    """ImageNet stem (7x7/2 conv + 3x3/2 max-pool) divides the side by 4, which would leave a 32x32
    CIFAR image 1x1 at the last stage; the CIFAR stem (3x3/1 conv, no pool) keeps full resolution."""
    if cifar_stem:
        return nn.Sequential(conv3x3(3, out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv2d(3, out_ch, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class ResNet(nn.Module):
    """Stem, four stages, global average pool; `forward` returns h of shape (B, feature_dim).

    zero_init_residual sets the gamma of the last BN of every residual branch to 0 (Goyal et al. 2017),
    so each block starts as the identity (relu of its shortcut) and the network behaves like a
    shallow one at init. That keeps early training stable at the large batches and LARS learning
    rates SimCLR uses, and SimCLR itself trains with it.
    """

    def __init__(self, arch: str = "resnet18", cifar_stem: bool = True, width: float = 1.0,
                 zero_init_residual: bool = True):
        super().__init__()
        if arch not in ARCH_SPECS:
            raise ValueError(f"arch={arch!r}: must be one of {', '.join(ARCH_SPECS)}")
        if not width > 0:
            raise ValueError(f"width={width!r}: must be > 0")
        block, depths = ARCH_SPECS[arch]
        planes = [scaled_width(c, width) for c in BASE_WIDTHS]
        self.stem = stem(planes[0], cifar_stem)
        stages, in_ch = [], planes[0]
        for i, (p, depth) in enumerate(zip(planes, depths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_ch, p, stride))
                in_ch = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He init (fan_out, ReLU gain) for convs, so activations keep their scale with depth."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)
