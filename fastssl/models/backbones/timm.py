"""`timm/<name>`: any timm model through `timm.create_model(name, num_classes=0, **model.kwargs)` (timm removes
the classifier itself and returns pooled features), without pretrained weights (nothing downloads).

timm is an extra (`pip install 'fastssl[timm]'`). Its attention layers use PyTorch's
scaled_dot_product_attention (timm's default where torch has it). A patch-embedding model (a ViT) is
built for one image size: data.image_size must equal its img_size and be a multiple of its patch size.
"""
from __future__ import annotations

from torch import nn

from fastssl.loaders.rules import ConfigError, shown
from fastssl.models import backbones

PREFIX = "timm/"
FORM = "timm/<name> (any timm model, e.g. timm/vit_small_patch16_224; pip install 'fastssl[timm]')"


def owns(arch: str) -> bool:
    return arch.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("model.arch=timm/...: needs the timm package: pip install 'fastssl[timm]'") from None
    return timm


def _create(model_cfg) -> nn.Module:
    timm = _timm()
    name = model_cfg.arch.removeprefix(PREFIX)
    if not timm.is_model(name):
        raise ConfigError(f"model.arch={shown(model_cfg.arch)}: timm has no model {name!r} (timm.list_models() lists them)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **model_cfg.kwargs)
    except TypeError as e:
        raise ConfigError(f"model.kwargs={shown(model_cfg.kwargs)}: timm's {name} refuses them ({e})") from None


def build(model_cfg, image_size: int | None, module: nn.Module | None) -> nn.Module:
    backbones.refuse_cifar_stem(model_cfg, f"{model_cfg.arch} is a timm model")
    model = _create(model_cfg)
    backbones.check_patch_size(model_cfg.arch, model, image_size)
    classifier = model.pretrained_cfg.get("classifier") or ()   # timm names its head: 'head', 'fc', ...
    model.removed = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return model


def library(model_cfg, image_size: int | None) -> backbones.Library:
    name = model_cfg.arch.removeprefix(PREFIX)
    kwargs = "".join(f", {k}={v!r}" for k, v in model_cfg.kwargs.items())
    return backbones.Library("timm", f"timm.create_model({name!r}, num_classes=0{kwargs})", lambda: _create(model_cfg))
