"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' projections, each standardised
over the batch, is pulled towards the identity: its diagonal to 1 (invariance), its off-diagonal to 0
(redundancy reduction). No negatives, no momentum network, no predictor.

For views a, b (B, D): za = (a - mean) / std over the batch (biased variance + 1e-5, as the authors'
affine-free BatchNorm1d computes it), C = za^T zb / B, loss = sum_i (1 - C_ii)^2 + lambda sum_{i != j}
C_ij^2 (the authors' code; lambda 0.0051). Over V views: the mean over view pairs (view_pairs.py).
Under torchrun the rows are the gathered global task, so the batch statistics and C are the global
batch's, as the authors' all-reduced C is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastssl.loaders.rules import finite_in
from fastssl.task.layout import TaskLayout

from . import register
from .base import Method, MethodContext
from .view_pairs import mean_over_view_pairs, refuse_query_mix

BN_EPS = 1e-5   # torch's BatchNorm1d default, which the authors' standardisation uses


def standardised(x: torch.Tensor) -> torch.Tensor:
    """Each column of x (B, D) to mean 0 and biased variance 1 over the batch."""
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + BN_EPS)


def barlow_twins_pair(a: torch.Tensor, b: torch.Tensor, lambd: float) -> torch.Tensor:
    c = standardised(a).T @ standardised(b) / a.shape[0]
    diagonal = torch.diagonal(c)
    on = (1 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambd * off


@register("barlow_twins")
class BarlowTwinsHead(Method):
    per_view_bn = True   # Barlow Twins' code runs the backbone once per view

    @dataclass
    class Settings:
        lambd: float = 0.0051   # weight of the off-diagonal terms (the paper's lambda; its code's 0.0051)

    def __init__(self, lambd: float):
        super().__init__()
        self.lambd = lambd

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        finite_in("method.barlow_twins.lambd", settings.lambd, 0, 1e3)
        refuse_query_mix("barlow_twins", cfg)

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> BarlowTwinsHead:
        return cls(settings.lambd)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        return mean_over_view_pairs(z, layout, "barlow_twins", lambda a, b: barlow_twins_pair(a, b, self.lambd))
