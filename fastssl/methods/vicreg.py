"""VICReg (Bardes et al. 2022): variance, invariance and covariance terms on two views' projections;
no negatives, no momentum network, no predictor, no normalisation of the embeddings.

For views a, b (B, D), as the authors' code computes it: invariance = mean squared error of a and b;
variance = (mean_j relu(1 - std_j(a)) + mean_j relu(1 - std_j(b))) / 2 with std = sqrt(unbiased var +
1e-4); covariance = (sum_{i != j} cov(a)_ij^2 + sum_{i != j} cov(b)_ij^2) / D with cov the unbiased
batch covariance; loss = 25 invariance + 25 variance + 1 covariance (the published coefficients).
Over V views: the mean over view pairs (view_pairs.py). Under torchrun the rows are the gathered
global batch, so the statistics are the global batch's, as the authors' gathered embeddings give.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastssl.loaders.rules import finite_in
from fastssl.task.layout import TaskLayout

from . import register
from .base import Method, MethodContext
from .view_pairs import mean_over_view_pairs, refuse_query_mix

STD_EPS = 1e-4   # inside the square root of the variance term (the paper's epsilon)


def _variance(x: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(x.var(0) + STD_EPS)).mean()


def _covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    cov = centred.T @ centred / (x.shape[0] - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / x.shape[1]


def vicreg_pair(a: torch.Tensor, b: torch.Tensor, sim: float, std: float, cov: float) -> torch.Tensor:
    return (sim * F.mse_loss(a, b) + std * (_variance(a) + _variance(b)) / 2
            + cov * (_covariance(a) + _covariance(b)))


@register("vicreg")
class VICRegHead(Method):
    per_view_bn = True   # VICReg's code runs the backbone once per view

    @dataclass
    class Settings:
        sim_coeff: float = 25.0   # invariance weight (lambda in the paper)
        std_coeff: float = 25.0   # variance weight (mu)
        cov_coeff: float = 1.0    # covariance weight (nu)

    def __init__(self, settings: Settings):
        super().__init__()
        self.coeffs = (settings.sim_coeff, settings.std_coeff, settings.cov_coeff)

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            finite_in(f"method.vicreg.{name}", getattr(settings, name), 0, 1e4)
        refuse_query_mix("vicreg", cfg)

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> VICRegHead:
        return cls(settings)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        return mean_over_view_pairs(z, layout, "vicreg", lambda a, b: vicreg_pair(a, b, *self.coeffs))
