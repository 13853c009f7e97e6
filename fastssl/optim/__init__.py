"""Optimizers (LARS, SGD, AdamW) with weight decay and LARS adaptation kept off biases and BN parameters.

Decaying a BN gamma or a bias towards 0 only fights the normalisation (the next layer's scale is
free), and trust ratios of these small vectors are noise; SimCLR excludes both, and so do we, for
every optimizer alike.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from fastssl.config import OPTIMIZERS
from fastssl.optim.lars import LARS
from fastssl.optim.recipe import resolve
from fastssl.optim.schedule import build_scheduler, lr_at

__all__ = ["LARS", "build_optimizer", "build_scheduler", "lr_at", "param_groups"]



def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters a module of `model` lists in its `no_weight_decay()` (timm's convention:
    a ViT's position embedding and class token, which decay would pull towards 0 like a bias)."""
    names = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return names


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: tensors with ndim > 1 (conv and linear weights) decay; the rest (biases, norm
    weights and biases, and what a module lists in `no_weight_decay()`) get weight_decay 0 (or
    weight_decay too with decay_norm_and_bias, as a plain torch optimizer over model.parameters() has
    it) and `lars_exclude=True`. Empty groups are left out."""
    excluded = no_decay_names(model)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decayed = [p.ndim > 1 and name not in excluded for name, p in trainable]
    groups = [
        {"params": [p for (_, p), d in zip(trainable, decayed) if d], "weight_decay": weight_decay,
         "lars_exclude": False},
        {"params": [p for (_, p), d in zip(trainable, decayed) if not d],
         "weight_decay": weight_decay if decay_norm_and_bias else 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def _implementation(optimizer_cls: type, model: nn.Module) -> dict:
    """fused=True where every parameter is a floating-point CUDA tensor and this torch's optimizer
    has a fused kernel (one launch for all tensors); the multi-tensor foreach path otherwise."""
    params = list(model.parameters())
    on_cuda = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    if on_cuda and "fused" in inspect.signature(optimizer_cls).parameters:
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(optim_cfg, model: nn.Module, batch_size: int = 256) -> torch.optim.Optimizer:
    """The optimizer `optim_cfg` (an OptimConfig) names, over `param_groups(model, weight_decay)`; `auto`
    and null fields take the recipe of the model's kind at the global `batch_size` (recipe.py).

    sgd: momentum, no Nesterov. adamw: decoupled weight decay, torch's default betas (momentum and
    trust_coefficient are unused). Build it after moving the model to its device: the fused choice
    looks at where the parameters are.
    """
    if optim_cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={optim_cfg.name!r}: must be one of {', '.join(OPTIMIZERS)}")
    optim_cfg = resolve(optim_cfg, model, batch_size)
    name, groups = optim_cfg.name, param_groups(model, optim_cfg.weight_decay, optim_cfg.decay_norm_and_bias)
    if name == "lars":
        return LARS(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                    weight_decay=optim_cfg.weight_decay, trust_coefficient=optim_cfg.trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=False,
                               **_implementation(torch.optim.SGD, model))
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, **_implementation(torch.optim.AdamW, model))
