"""SimCLR's contrastive head: every image is its own class, its other views are the positives."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from fastssl.kernels import narrow, nt_xent, sim_xent, unit_rows
from fastssl.loaders.rules import check_temperature
from fastssl.task.layout import RankRows, TaskLayout, TaskLogits, mixed_loss

from . import register
from .base import Method, MethodContext


@register("contrastive", default=True, aliases=("simclr",))
class ContrastiveHead(Method):
    """NT-Xent over L2-normalised projections for any number of views >= 2.

    Support and query views are alike to it; the split matters only under query mixing, where the
    mixed query rows of image i count as image partner[i] in the (1 - lam) term (mixed_loss): their
    positives become partner[i]'s other views, and partner[i]'s rows find their positive in them.

    Under torchrun a rank computes its own rows' terms (`rank_loss`): its V*b rows against all V*B
    gathered rows, one sim_xent call with the columns in rank-major order, where its rows are the
    contiguous block at row_offset (self-masking and positives follow the columns' instance ids).
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
    def build(cls, settings: Settings, ctx: MethodContext) -> ContrastiveHead:
        return cls(settings.temperature, impl=ctx.impl, operand_dtype=ctx.operand_dtype)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: (V*B, D), view-major rows; returns the scalar loss in float32."""
        batch = layout.batch(z, "contrastive")

        def loss_of(ids: torch.Tensor) -> torch.Tensor:
            return nt_xent(z, layout.n_views, self.temperature, impl=self.impl, instance_ids=ids,
                           operand_dtype=self.operand_dtype)

        return mixed_loss(loss_of, layout.row_images(batch, z.device), layout, layout.n_supp * batch)

    def rank_loss(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None,
                  rows: RankRows) -> torch.Tensor:
        """The terms of this rank's rows, summed, over the global row count (the ranks' shares sum to forward's)."""
        if rows.whole:
            return self(z, layout, targets)
        batch, views = layout.batch(z, "contrastive"), layout.n_views
        keys = narrow(unit_rows(rows.rank_major(z, views)), self.operand_dtype)   # every rank's rows, rank-major
        first = rows.first_row(keys.shape[0])
        queries = keys[first:first + keys.shape[0] // rows.world]

        def loss_of(ids: torch.Tensor) -> torch.Tensor:
            return sim_xent(queries, keys, scale=1.0 / self.temperature, instance_ids=rows.rank_major(ids, views),
                            self_mask=True, row_offset=first, reduction="sum", impl=self.impl) / keys.shape[0]

        return mixed_loss(loss_of, layout.row_images(batch, z.device), layout, layout.n_supp * batch)

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits:
        """Every row against every other row (self excluded); right when the best is another view of its image."""
        batch = layout.batch(z, "contrastive")
        zn = unit_rows(z)
        logits = (zn @ zn.mT / self.temperature).fill_diagonal_(float("-inf"))
        images = layout.row_images(batch, z.device)
        return TaskLogits(logits, images, images)
