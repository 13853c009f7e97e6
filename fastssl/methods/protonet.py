"""Prototypical Networks as an SSL head: each image is a class, its support views make its prototype."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from fastssl.kernels import narrow, sim_xent
from fastssl.loaders.rules import check_temperature
from fastssl.task.layout import RankRows, TaskLayout, TaskLogits, mixed_loss, split_views

from . import register
from .base import Method, MethodContext


@register("protonet")
class ProtoNetHead(Method):
    """Queries classified among the B prototypes by squared Euclidean distance over temperature.

    -||q - p||^2 / tau = (2 q.p - ||p||^2) / tau - ||q||^2 / tau, and the last term is constant per
    row, so the softmax is sim_xent with scale 2 / tau and col_bias -||p||^2 / tau: the (queries x B)
    distance matrix is never built.

    Under torchrun a rank classifies its own queries (`rank_loss`) among the prototypes of the whole
    gathered support.
    """

    splits_rows = True

    @dataclass
    class Settings:
        temperature: float = 0.2

    def __init__(self, temperature: float, impl: str = "auto", operand_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.temperature, self.impl, self.operand_dtype = temperature, impl, operand_dtype

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        check_temperature(f"method.{cls.name}.temperature", settings.temperature)

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> ProtoNetHead:
        return cls(settings.temperature, impl=ctx.impl, operand_dtype=ctx.operand_dtype)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        task = split_views(z, layout, "protonet")
        prototypes = task.support.mean(dim=0)
        bias = -prototypes.pow(2).sum(dim=1) / self.temperature     # from the fp32 prototypes
        queries, keys = (narrow(t, self.operand_dtype) for t in (task.queries, prototypes))

        def loss_of(targets: torch.Tensor) -> torch.Tensor:
            return sim_xent(queries, keys, scale=2.0 / self.temperature, col_bias=bias, targets=targets,
                            impl=self.impl)

        return mixed_loss(loss_of, task.targets, layout, 0)

    def rank_loss(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None,
                  rows: RankRows) -> torch.Tensor:
        """This rank's queries' terms, summed, over the global query count."""
        if rows.whole:
            return self(z, layout, targets)
        task = split_views(z, layout, "protonet")
        prototypes = task.support.mean(dim=0)
        bias = -prototypes.pow(2).sum(dim=1) / self.temperature
        mine = rows.own(task.queries, layout.n_query)
        queries, keys = (narrow(t, self.operand_dtype) for t in (mine, prototypes))

        def loss_of(targets: torch.Tensor) -> torch.Tensor:
            return sim_xent(queries, keys, scale=2.0 / self.temperature, col_bias=bias, targets=targets,
                            reduction="sum", impl=self.impl) / task.queries.shape[0]

        return mixed_loss(loss_of, rows.own(task.targets, layout.n_query), layout, 0)

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits:
        """Queries against the prototypes, -||q - p||^2 / tau."""
        task = split_views(z, layout, "protonet")
        prototypes = task.support.mean(dim=0)
        logits = -torch.cdist(task.queries, prototypes).pow(2) / self.temperature
        return TaskLogits(logits, task.targets, torch.arange(task.classes, device=z.device))
