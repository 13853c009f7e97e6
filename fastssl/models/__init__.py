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

    x is one batch, or a task's views (a list of (B,3,S,S) tensors, view-major; under multi-crop of
    several sizes). Views go through the network one batched forward per run of equal-sized views,
    channels-last, so each crop group's BatchNorm statistics are its own (as DINO's and SwAV's loops
    have it); with `per_view_bn` (model.per_view_bn) in training, one forward per view, as BYOL's, MoCo's
    and lightly's loops do. One forward of several views mixes an image's views in a BN layer's
    statistics: lightly's own SimCLR loop made to do that scored 2.5 kNN points lower (2 seeds, CIFAR-10
    JPEG, width 1/8; bench/NOTES.md, peers). In eval mode BN uses its running statistics, so per-view
    forwards would change nothing, and views of one size go whole.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, per_view_bn: bool = False):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.per_view_bn = per_view_bn

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(x, torch.Tensor):
            return self._whole(x)
        parts = [self._whole(torch.cat(group).contiguous(memory_format=torch.channels_last))
                 for group in self.forward_groups(x)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([h for h, _ in parts]), torch.cat([z for _, z in parts])

    def forward_groups(self, views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """The views each forward takes: one per view (per_view_bn, training), else runs of equal shape."""
        if self.per_view_bn and self.training:
            return [[view] for view in views]
        groups: list[list[torch.Tensor]] = []
        for view in views:
            if groups and groups[-1][-1].shape == view.shape:
                groups[-1].append(view)
            else:
                groups.append([view])
        return groups

    def _whole(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.projector(h)


def build_model(model_cfg, per_view_bn: bool = False, image_size: int | None = None, module: nn.Module | None = None,
                init: bool = True) -> SSLNet:
    """Encoder + projector; conv weights in channels_last when asked, the layout tensor cores want.
    `per_view_bn`: one forward per view in training (model.per_view_bn, resolved against the method's
    default by the trainer); the rest as build_encoder."""
    encoder = build_encoder(model_cfg, image_size, module, init)
    model = SSLNet(encoder, build_projector(model_cfg, encoder.feature_dim), per_view_bn)
    if model_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
