"""Prototypes: the K learnable directions DINO and SwAV score unit embeddings against (the last layer
of DINO's head, SwAV's prototype layer). This module registers no method: it holds the layer.

The rows are used at unit length, each method its own way: DINO's last layer is weight-normalised
(W = g V / |V|, with g fixed at 1 unless norm_last_layer is off), so its gradient reaches V through
the normalisation; SwAV normalises the stored rows in place before each step and differentiates the
unit rows directly, as its code does. Both freeze the layer early in training (DINO for the first
epoch, SwAV for its first iterations): a frozen layer is detached, so its gradient is None and the
optimizer leaves it (weight decay included), as the originals' `p.grad = None` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_PROTOTYPES = 1 << 18   # 4x DINO's 65,536: far beyond the literature, a typo fails before any allocation


class Prototypes(nn.Module):
    """K x D prototype rows; `scale` (K,) is DINO's trainable weight-norm gain where asked for."""

    def __init__(self, dim: int, count: int, trainable_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(count, dim))
        nn.init.uniform_(self.weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))   # nn.Linear's default
        self.scale = nn.Parameter(torch.ones(count)) if trainable_scale else None

    def weight_normed(self, frozen: bool = False) -> torch.Tensor:
        """DINO's weight-normalised rows g V / |V| (float32; float64 kept), detached while frozen."""
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        rows = F.normalize(self.weight.to(dtype), dim=1)
        if self.scale is not None:
            rows = rows * self.scale.to(dtype)[:, None]
        return rows.detach() if frozen else rows

    @torch.no_grad()
    def normalize_(self) -> None:
        """SwAV: the stored rows made unit length in place (no gradient through the normalisation)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))
