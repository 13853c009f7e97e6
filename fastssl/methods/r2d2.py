"""R2D2 as an SSL head: a closed-form ridge regression from each image's support views to its one-hot
label, then its queries classified by the regression's outputs."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fastssl.kernels import ridge_solve, sim_xent
from fastssl.loaders.rules import check_temperature, finite_in
from fastssl.task.layout import RankRows, TaskLayout, TaskLogits, mixed_loss, split_views

from . import register
from .base import Method, MethodContext


@register("r2d2")
class R2D2Head(Method):
    """W = ridge(support rows -> one-hot image labels); query logits `scale * q W + bias`; cross-entropy.

    The support of the whole batch is one task (B classes, n_supp * B rows of dimension D): ridge_solve
    picks the smaller of the primal (D x D) and dual system. The logits go through sim_xent in targets
    mode with k = (scale * W)^T, so the (queries x B) logits are never stored on the fused path.
    Learnable, as in R2D2 and MetaOptNet: the scale (starting at 1 / temperature, so that "temperature"
    means what it does for every head), the bias, and lambda (as log lambda, which keeps it > 0).
    The bias is one number added to every logit; the softmax cancels it, so its gradient is exactly 0:
    it is there so the parametrisation matches the papers', not because it can learn.

    Under torchrun the one task spans every rank: each rank solves the same ridge system from the whole
    gathered support (a shared, redundant solve: splitting it would need collectives inside the solve
    and its backward, for a system of size min(n_supp * B, D)), then computes only its own queries'
    cross-entropy (`rank_loss`). The solve's gradient reaches every rank's support rows through the
    gather's backward.
    """

    splits_rows = True

    @dataclass
    class Settings:
        temperature: float = 0.2     # the logits' starting scale is 1 / temperature
        ridge_lambda: float = 1.0    # starting value of the learnable ridge penalty (> 0)

    RENAMED = {"ridge_lambda": "ridge_lambda"}

    def __init__(self, temperature: float, ridge_lambda: float, impl: str = "auto"):
        super().__init__()
        self.impl = impl
        self.scale = nn.Parameter(torch.tensor(1.0 / temperature))
        self.bias = nn.Parameter(torch.zeros(()))
        self.log_lambda = nn.Parameter(torch.tensor(math.log(ridge_lambda)))

    def _fit(self, z: torch.Tensor, layout: TaskLayout):
        """The task split, and the query logits' keys (B, D) = (scale * W)^T and bias (B,)."""
        task = split_views(z, layout, "r2d2")
        batch, dim = task.classes, task.support.shape[2]
        labels = torch.eye(batch, device=z.device).repeat(layout.n_supp, 1)   # row v*B + i -> image i
        weights = ridge_solve(task.support.reshape(1, -1, dim), labels[None], self.log_lambda.exp(),
                              impl=self.impl)[0]                                 # (D, B)
        return task, (self.scale * weights).mT, self.bias.expand(batch)

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        check_temperature(f"method.{cls.name}.temperature", settings.temperature)
        # The ridge keeps the fp32 system positive definite: far below 1e-6 it is lost next to the Gram
        # matrix's entries (and 1e-300 is 0 in fp32); far above 1e6 it drowns them.
        finite_in(f"method.{cls.name}.ridge_lambda", settings.ridge_lambda, 1e-6, 1e6)

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> R2D2Head:
        return cls(settings.temperature, settings.ridge_lambda, impl=ctx.impl)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        task, keys, bias = self._fit(z, layout)

        def loss_of(targets: torch.Tensor) -> torch.Tensor:
            return sim_xent(task.queries, keys, scale=1.0, col_bias=bias, targets=targets, impl=self.impl)

        return mixed_loss(loss_of, task.targets, layout, 0)

    def rank_loss(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None,
                  rows: RankRows) -> torch.Tensor:
        """The shared solve, then this rank's queries' terms, summed, over the global query count."""
        if rows.whole:
            return self(z, layout, targets)
        task, keys, bias = self._fit(z, layout)
        queries = rows.own(task.queries, layout.n_query)

        def loss_of(targets: torch.Tensor) -> torch.Tensor:
            return sim_xent(queries, keys, scale=1.0, col_bias=bias, targets=targets, reduction="sum",
                            impl=self.impl) / task.queries.shape[0]

        return mixed_loss(loss_of, rows.own(task.targets, layout.n_query), layout, 0)

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits:
        task, keys, bias = self._fit(z, layout)
        return TaskLogits(task.queries @ keys.mT + bias, task.targets, torch.arange(task.classes, device=z.device))
