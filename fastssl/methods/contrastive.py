"""SimCLR's contrastive head: every image is its own class, its other views are the positives."""
from __future__ import annotations

import torch
from fastssl.kernels import nt_xent, unit_rows
from fastssl.task.layout import TaskLayout, TaskLogits, mixed_loss

from . import register
from .base import Method, MethodContext


@register("contrastive")
class ContrastiveHead(Method):
    """NT-Xent over L2-normalised projections for any number of views >= 2.

    Support and query views are alike to it; the split matters only under query mixing, where the
    mixed query rows of image i count as image partner[i] in the (1 - lam) term (mixed_loss): their
    positives become partner[i]'s other views, and partner[i]'s rows find their positive in them.
    """

    def __init__(self, temperature: float, impl: str = "auto", operand_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.temperature, self.impl, self.operand_dtype = temperature, impl, operand_dtype

    @classmethod
    def build(cls, cfg, ctx: MethodContext) -> ContrastiveHead:
        return cls(cfg.temperature, impl=cfg.loss_impl, operand_dtype=ctx.operand_dtype)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: (V*B, D), view-major rows; returns the scalar loss in float32."""
        batch = layout.batch(z, "contrastive")

        def loss_of(ids: torch.Tensor) -> torch.Tensor:
            return nt_xent(z, layout.n_views, self.temperature, impl=self.impl, instance_ids=ids,
                           operand_dtype=self.operand_dtype)

        return mixed_loss(loss_of, layout.row_images(batch, z.device), layout, layout.n_supp * batch)

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits:
        """Every row against every other row (self excluded); right when the best is another view of its image."""
        batch = layout.batch(z, "contrastive")
        zn = unit_rows(z)
        logits = (zn @ zn.mT / self.temperature).fill_diagonal_(float("-inf"))
        images = layout.row_images(batch, z.device)
        return TaskLogits(logits, images, images)
