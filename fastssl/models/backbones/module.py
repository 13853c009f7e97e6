"""`module`: the nn.Module a user gives `fastssl.train(model=...)`, used as the encoder as it is (it must map
(B, 3, H, W) images to (B, D) features). A run directory cannot rebuild it from config.yaml, so readers
of the run (`fastssl.load`, eval, export) take the same module again; the CLI, which has none, says so."""
from __future__ import annotations

from torch import nn

from fastssl.config import USER_MODULE
from fastssl.loaders.rules import ConfigError
from fastssl.models import backbones

FORM = "an nn.Module given to fastssl.train(model=...)"


def owns(arch: str) -> bool:
    return arch == USER_MODULE


def build(model_cfg, image_size: int | None, module: nn.Module | None) -> nn.Module:
    if module is None:
        raise ConfigError("model.arch=module: this run trained a user's nn.Module, which its config cannot rebuild; "
                          "read it from Python with fastssl.load(RUN, model=<the same module class, new>)")
    backbones.refuse_cifar_stem(model_cfg, "a user's module keeps its own stem")
    return module


def library(model_cfg, image_size: int | None) -> None:
    return None
