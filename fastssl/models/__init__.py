"""Encoder f (ResNet), projector g (MLP) and the SSLNet that chains them: x -> h = f(x) -> z = g(h)."""
from __future__ import annotations

import torch
from torch import nn

from fastssl.models.projector import Projector
from fastssl.models.resnet import ResNet

__all__ = ["Projector", "ResNet", "SSLNet", "build_encoder", "build_model", "build_projector", "torchvision_resnet"]


def __getattr__(name: str):
    """`torchvision_resnet` (torchvision_compat.py) loads on first use: importing torchvision takes a second,
    which every user of the models would pay otherwise."""
    if name == "torchvision_resnet":
        from fastssl.models.torchvision_compat import torchvision_resnet
        return torchvision_resnet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_encoder(model_cfg, image_size: int | None = None, module: nn.Module | None = None,
                  init: bool = True) -> nn.Module:
    """The encoder `model_cfg` (a ModelConfig) names, from its backbone family (backbones/), with
    `feature_dim`; `image_size` (data.image_size) is what it is probed and checked at, `module` the
    user's network for model.arch=module, `init` whether model.init's weights are loaded."""
    from fastssl.models import backbones
    return backbones.build(model_cfg, image_size, module, init)


def build_projector(model_cfg, in_dim: int) -> Projector:
    return Projector(in_dim, model_cfg.projector_hidden, model_cfg.projector_out,
                     layers=model_cfg.projector_layers, batch_norm=model_cfg.projector_bn,
                     out_bn=model_cfg.projector_out_bn)


class SSLNet(nn.Module):
    """`forward(x) -> (h, z)`: h is the representation kept for evaluation, z what the head sees.

    bn_groups > 1 (model.per_view_bn): in training, x's rows are that many equal blocks (the views,
    view-major) and each block goes through the network alone, so every BatchNorm normalises a view
    with its own batch statistics, as loops that call the network once per view have it. With one
    forward of all views, a BN layer's statistics mix an image's views: lightly's own SimCLR loop made
    to do that scored 2.5 kNN points lower (2 seeds, CIFAR-10 JPEG, width 1/8; bench/NOTES.md, peers).
    In eval mode BN uses its running statistics and the blocks would change nothing, so x goes whole.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, bn_groups: int = 1):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.bn_groups = bn_groups

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.bn_groups > 1:
            if x.shape[0] % self.bn_groups:
                raise ValueError(f"per-view BatchNorm: {x.shape[0]} rows are not {self.bn_groups} equal views")
            parts = [self._whole(block) for block in x.chunk(self.bn_groups)]
            return torch.cat([h for h, _ in parts]), torch.cat([z for _, z in parts])
        return self._whole(x)

    def _whole(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.projector(h)


def build_model(model_cfg, views: int = 1, image_size: int | None = None, module: nn.Module | None = None,
                init: bool = True) -> SSLNet:
    """Encoder + projector; conv weights in channels_last when asked, the layout tensor cores want.
    `views`: the rows' view count, whose blocks model.per_view_bn normalises apart; the rest as build_encoder."""
    encoder = build_encoder(model_cfg, image_size, module, init)
    model = SSLNet(encoder, build_projector(model_cfg, encoder.feature_dim),
                   bn_groups=views if model_cfg.per_view_bn else 1)
    if model_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
