"""The optimizer a run gets when its config leaves the choice to fastssl (`optim.name: auto`, `optim.lr` and
`optim.weight_decay` null): the published recipe of the network's kind.

Convolutional networks train self-supervised with LARS at lr 1.0 and a tiny weight decay (SimCLR's
recipe, scaled to fastssl's default batch); transformers diverge or stall under LARS and train with
AdamW, lr 5e-4 per 256 images and weight decay 0.05 (the ViT recipes of MoCo v3 and DINO). Values a
config sets are kept as they are.
"""
from __future__ import annotations

import dataclasses

from torch import nn

# optimizer -> (learning rate per 256 images of the global batch, or a fixed one; weight decay)
RECIPES = {"lars": (None, 1.0, 1e-6), "sgd": (0.06, None, 5e-4), "adamw": (5e-4, None, 0.05)}


def has_attention(network: nn.Module) -> bool:
    """Whether any layer of `network` is an attention layer (torch's, or a library's class named *Attention):
    what decides the transformer recipe, whatever family built the network."""
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention")
               for m in network.modules())


def resolve(optim_cfg, network: nn.Module, batch_size: int):
    """A copy of `optim_cfg` (an OptimConfig) with `auto` and null fields made concrete for `network`."""
    name = optim_cfg.name
    if name == "auto":
        name = "adamw" if has_attention(network) else "lars"
    per_256, fixed, decay = RECIPES[name]
    lr = optim_cfg.lr if optim_cfg.lr is not None else fixed if fixed is not None else per_256 * batch_size / 256
    weight_decay = optim_cfg.weight_decay if optim_cfg.weight_decay is not None else decay
    return dataclasses.replace(optim_cfg, name=name, lr=lr, weight_decay=weight_decay)
