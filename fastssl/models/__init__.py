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


def build_encoder(model_cfg) -> ResNet:
    """The ResNet that `model_cfg` (a ModelConfig) names; ValueError naming model.arch otherwise."""
    return ResNet(model_cfg.arch, cifar_stem=model_cfg.cifar_stem, width=model_cfg.width)


def build_projector(model_cfg, in_dim: int) -> Projector:
    return Projector(in_dim, model_cfg.projector_hidden, model_cfg.projector_out,
                     layers=model_cfg.projector_layers, batch_norm=model_cfg.projector_bn)


class SSLNet(nn.Module):
    """`forward(x) -> (h, z)`: h is the representation kept for evaluation, z what the head sees."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.projector(h)


def build_model(model_cfg) -> SSLNet:
    """Encoder + projector; conv weights in channels_last when asked, the layout tensor cores want."""
    encoder = build_encoder(model_cfg)
    model = SSLNet(encoder, build_projector(model_cfg, encoder.feature_dim))
    if model_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
