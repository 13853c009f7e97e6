"""fastssl's ResNet as a torchvision ResNet, so a trained encoder runs where only torchvision is installed.

Width: fastssl scales every stage by `model.width`; torchvision's ResNet has no such knob (its
`width_per_group` widens only a bottleneck's inner 3x3), so `ScaledResNet` is torchvision's own class,
blocks and forward, with its stem and stages built at the scaled widths. At width 1.0 its state dict is
exactly `torchvision.models.resnet18/34/50()`'s once conv1/maxpool take the stem and fc is replaced.

Keys: found by walking both module trees, not written per arch. Both libraries register a block's layers
in the same order (conv, BN, ..., then the projection shortcut), so the modules holding state pair up in
order; each pair must have equal type and constructor arguments, and the copy loads with strict=True.
"""
from __future__ import annotations

from itertools import zip_longest

from torch import nn
from torchvision.models import resnet as tv

from fastssl.models.resnet import ARCH_SPECS, BASE_WIDTHS, scaled_width

TV_BLOCKS = {1: tv.BasicBlock, 4: tv.Bottleneck}   # fastssl block expansion -> torchvision's block


def stem_conv(out_ch: int, cifar_stem: bool) -> nn.Conv2d:
    """conv1: the CIFAR stem's 3x3 stride-1 conv, else torchvision's 7x7 stride-2 one."""
    if cifar_stem:
        return nn.Conv2d(3, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
    return nn.Conv2d(3, out_ch, kernel_size=7, stride=2, padding=3, bias=False)


class ScaledResNet(tv.ResNet):
    """torchvision's ResNet with the stem and every stage's planes scaled by `width` (rounded as fastssl
    rounds them); the CIFAR stem replaces conv1 and drops the max-pool; `fc` defaults to Identity."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: float = 1.0, cifar_stem: bool = False,
                 fc: nn.Module | None = None):
        self.width = width   # before ResNet.__init__: the _make_layer calls it makes read it
        super().__init__(block, layers)
        stem_ch = scaled_width(BASE_WIDTHS[0], width)
        self.conv1 = stem_conv(stem_ch, cifar_stem)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")   # as ResNet's init
        self.bn1 = nn.BatchNorm2d(stem_ch)
        if cifar_stem:
            self.maxpool = nn.Identity()
        self.fc = nn.Identity() if fc is None else fc

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if planes == BASE_WIDTHS[0]:   # layer1: its input is the stem's output, which __init__ scales after
            self.inplanes = scaled_width(planes, self.width)
        return super()._make_layer(block, scaled_width(planes, self.width), blocks, stride, dilate)


def torchvision_resnet(arch: str, *, cifar_stem: bool, width: float = 1.0, fc: nn.Module | None = None) -> tv.ResNet:
    """The torchvision ResNet shaped as `fastssl.models.ResNet(arch, cifar_stem, width)`; with fc=None it
    returns the features h (B, feature_dim), as fastssl's encoder does."""
    if arch not in ARCH_SPECS:
        raise ValueError(f"arch={arch!r}: must be one of {', '.join(ARCH_SPECS)}")
    if not width > 0:
        raise ValueError(f"width={width!r}: must be > 0")
    block, depths = ARCH_SPECS[arch]
    return ScaledResNet(TV_BLOCKS[block.expansion], list(depths), width, cifar_stem, fc)


def _stateful(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, submodule) of every submodule holding parameters or buffers of its own, in registration order."""
    return [(name, m) for name, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]


def key_map(source: nn.Module, target: nn.Module) -> dict[str, str]:
    """source's state-dict key -> target's, pairing their stateful submodules in order; ValueError naming
    the first pair that differs in type or constructor arguments (or has no partner)."""
    ours, theirs = _stateful(source), _stateful(target)
    for (a, x), (b, y) in zip_longest(ours, theirs, fillvalue=("<none>", None)):
        if x is None or y is None or type(x) is not type(y) or x.extra_repr() != y.extra_repr():
            raise ValueError(f"fastssl module {a} ({x!r}) has no torchvision counterpart: {b} is {y!r}")
    return {f"{a}.{key}": f"{b}.{key}" for (a, x), (b, _) in zip(ours, theirs) for key in x.state_dict()}


def copy_to_torchvision(source: nn.Module, target: nn.Module) -> nn.Module:
    """Loads `source`'s weights and BN statistics (a fastssl ResNet, or an SSLNet when target's fc is a
    projector of the same shape) into `target` under the mapped keys, strict; returns target."""
    keys = key_map(source, target)
    target.load_state_dict({keys[key]: value for key, value in source.state_dict().items()})
    return target


def as_code(module: nn.Module) -> str:
    """The torch.nn expression that builds a module of this shape: what to assign to conv1, maxpool or fc."""
    if isinstance(module, nn.Sequential):
        return f"nn.Sequential({', '.join(as_code(m) for m in module)})"
    return f"nn.{module!r}"
