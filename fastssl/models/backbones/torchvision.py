"""`torchvision/<name>`: any torchvision classification model, built without weights (nothing downloads),
its classifier (the last nn.Linear) replaced by nn.Identity so it returns the pooled features.

model.kwargs go to `torchvision.models.get_model(name, **kwargs)`; a ResNet also takes
model.zero_init_residual and model.cifar_stem (conv1 a 3x3 stride-1 convolution, no max-pool), which
other torchvision models refuse. The encoder keeps torchvision's own parameter names, so its state
dict loads strict into `torchvision.models.<name>()` with the same classifier removed.
"""
from __future__ import annotations

import importlib

from torch import nn

from fastssl.loaders.rules import ConfigError, shown
from fastssl.models import backbones

PREFIX = "torchvision/"
FORM = "torchvision/<name> (any torchvision classification model, e.g. torchvision/resnet50)"


def owns(arch: str) -> bool:
    return arch.startswith(PREFIX)


def _construct(model_cfg, image_size: int | None) -> tuple[nn.Module, str]:
    """torchvision's model with its classifier removed and, for a ResNet, the stem adapted; the
    classifier's name."""
    models = importlib.import_module("torchvision.models")
    name = model_cfg.arch.removeprefix(PREFIX)
    if name not in models.list_models(module=models):
        raise ConfigError(f"model.arch={shown(model_cfg.arch)}: torchvision has no classification model {name!r} "
                          f"(torchvision.models.list_models(): {', '.join(models.list_models(module=models)[:8])}, ...)")
    is_resnet = name.startswith(("resnet", "resnext", "wide_resnet"))
    kwargs = dict(model_cfg.kwargs)
    if is_resnet:
        kwargs.setdefault("zero_init_residual", model_cfg.zero_init_residual)
    else:
        backbones.refuse_cifar_stem(model_cfg, f"torchvision's {name} is not a ResNet")
    try:
        model = models.get_model(name, weights=None, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.kwargs={shown(model_cfg.kwargs)}: torchvision's {name} refuses them ({e})") from None
    if is_resnet and backbones.cifar_stem(model_cfg, image_size):
        conv = model.conv1
        model.conv1 = nn.Conv2d(3, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    classifier = backbones.last_linear(model)
    if classifier is None:
        raise ConfigError(f"model.arch={shown(model_cfg.arch)}: has no linear classifier to remove (fastssl needs "
                          "a network that ends in pooled features and a linear layer)")
    backbones.replace_module(model, classifier, nn.Identity())
    model.removed = (classifier,)
    if hasattr(model, "class_token"):   # a ViT: its token and position embedding take no weight decay
        model.no_weight_decay = lambda: {"class_token", "encoder.pos_embedding"}
    return model, classifier


def build(model_cfg, image_size: int | None, module: nn.Module | None) -> nn.Module:
    return _construct(model_cfg, image_size)[0]


def library(model_cfg, image_size: int | None) -> backbones.Library:
    name = model_cfg.arch.removeprefix(PREFIX)
    model, classifier = _construct(model_cfg, image_size)
    kwargs = ", ".join(f"{k}={v!r}" for k, v in model_cfg.kwargs.items())
    stem = ("; m.conv1 = torch.nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()"
            if isinstance(getattr(model, "maxpool", None), nn.Identity) else "")
    return backbones.Library("torchvision", f"m = torchvision.models.{name}({kwargs}){stem}; m.{classifier} = "
                             "torch.nn.Identity()", lambda: _construct(model_cfg, image_size)[0])
