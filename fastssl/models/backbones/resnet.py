"""fastssl's own ResNets (`resnet18|resnet34|resnet50`, with model.width and model.cifar_stem); exported
state dicts load into torchvision's ResNet (fastssl/models/torchvision_compat.py)."""
from __future__ import annotations

from torch import nn

from fastssl.loaders.rules import ConfigError, shown
from fastssl.models import backbones
from fastssl.models.resnet import ARCH_SPECS, ResNet

FORM = "resnet18, resnet34, resnet50 (fastssl's, with model.width)"


def owns(arch: str) -> bool:
    return arch in ARCH_SPECS


def build(model_cfg, image_size: int | None, module: nn.Module | None) -> nn.Module:
    if model_cfg.kwargs:
        raise ConfigError(f"model.kwargs={shown(model_cfg.kwargs)}: fastssl's ResNets take none (their settings are "
                          "model.width, model.cifar_stem and model.zero_init_residual)")
    return ResNet(model_cfg.arch, cifar_stem=backbones.cifar_stem(model_cfg, image_size), width=model_cfg.width,
                  zero_init_residual=model_cfg.zero_init_residual)


def library(model_cfg, image_size: int | None) -> backbones.Library:
    from fastssl.models.torchvision_compat import copy_to_torchvision, torchvision_resnet

    stem = backbones.cifar_stem(model_cfg, image_size)

    def construct() -> nn.Module:
        return torchvision_resnet(model_cfg.arch, cifar_stem=stem, width=model_cfg.width)

    build_ = (f"torchvision.models.{model_cfg.arch}()" if model_cfg.width == 1.0 else
              f"fastssl.models.torchvision_resnet({model_cfg.arch!r}, cifar_stem={stem}, width={model_cfg.width})")
    return backbones.Library("torchvision", build_, construct,
                             lambda encoder: copy_to_torchvision(encoder, construct()).state_dict())
