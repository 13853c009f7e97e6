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
from fastssl.optim.schedule import build_scheduler, lr_at

__all__ = ["LARS", "build_optimizer", "build_scheduler", "lr_at", "param_groups"]



def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: tensors with ndim > 1 (conv and linear weights) decay; the rest (biases, BN
    weights and biases) get weight_decay 0 (or weight_decay too with decay_norm_and_bias, as a plain
    torch optimizer over model.parameters() has it) and `lars_exclude=True`. Empty groups are left out."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay, "lars_exclude": False},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": weight_decay if decay_norm_and_bias else 0.0,
         "lars_exclude": True},
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


def build_optimizer(optim_cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer `optim_cfg` (an OptimConfig) names, over `param_groups(model, weight_decay)`.

    sgd: momentum, no Nesterov. adamw: decoupled weight decay, torch's default betas (momentum and
    trust_coefficient are unused). Build it after moving the model to its device: the fused choice
    looks at where the parameters are.
    """
    name, groups = optim_cfg.name, param_groups(model, optim_cfg.weight_decay, optim_cfg.decay_norm_and_bias)
    if name == "lars":
        return LARS(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                    weight_decay=optim_cfg.weight_decay, trust_coefficient=optim_cfg.trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=False,
                               **_implementation(torch.optim.SGD, model))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, **_implementation(torch.optim.AdamW, model))
    raise ValueError(f"optim.name={name!r}: must be one of {', '.join(OPTIMIZERS)}")
