"""MoCo v3 (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"):
BYOL's networks (a predictor on the online branch, an EMA momentum encoder with a cosine momentum
schedule) trained by InfoNCE against the momentum encoder's keys of the same batch; no queue.

For views 1, 2 the paper's loss is ctr(q1, k2) + ctr(q2, k1), with ctr(q, k) = 2 tau CE(q k^T / tau,
image index) over unit rows (each query's positive is its image's key, the other images' keys of the
batch are the negatives). For V views: 2 x the mean of ctr over the V (V - 1) ordered pairs of views,
which is the paper's sum for V = 2. The keys of one view are the columns of one fused `sim_xent` call
against the queries of every other view, so the (rows x B) logits are never stored on a GPU. Under
torchrun the keys are every rank's (the gathered global batch), as the paper's concatenated keys are.
Query mixing works as in the other heads (layout.mixed_loss): a mixed query's positive is lam its
image's key + (1 - lam) its partner's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastssl.kernels import narrow, sim_xent, unit_rows
from fastssl.loaders.rules import check_temperature, int_in, require
from fastssl.task.layout import TaskLayout, mixed_loss

from . import register
from .base import MethodContext
from .byol import BYOLHead


def mocov3_loss(p: torch.Tensor, k: torch.Tensor, layout: TaskLayout, temperature: float, impl: str = "auto",
                operand_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """p: online predictions (V*B, D), k: momentum keys of the unmixed views (V*B, D), view-major; scalar
    float32 (float64 kept)."""
    if p.shape != k.shape:
        raise ValueError(f"mocov3: queries {tuple(p.shape)} and keys {tuple(k.shape)} must have equal shapes")
    batch, views = layout.batch(p, "mocov3"), layout.n_views
    qn = unit_rows(p)
    kn = unit_rows(k.detach()).to(qn.dtype)
    images = layout.row_images(batch, p.device)
    row_view = torch.arange(views, device=p.device).repeat_interleave(batch)
    total = 0
    for w in range(views):
        others = row_view != w
        queries, keys = narrow(qn[others], operand_dtype), narrow(kn[w * batch:(w + 1) * batch], operand_dtype)

        def loss_of(row_images: torch.Tensor) -> torch.Tensor:
            return sim_xent(queries, keys, scale=1.0 / temperature, targets=row_images[others], impl=impl)

        total = total + mixed_loss(loss_of, images, layout, layout.n_supp * batch)
    return 2 * (2 * temperature) * total / views


@register("mocov3")
class MoCoV3Head(BYOLHead):
    """BYOL's predictor and momentum target (byol.py), MoCo v3's InfoNCE loss."""

    @dataclass
    class Settings:
        momentum: float = 0.99     # momentum encoder's EMA momentum at step 0, rising to 1 by a cosine (the paper's)
        temperature: float = 1.0   # the paper's ResNet-50 value; its ViTs use 0.2
        predictor_hidden: int = 0  # the predictor's hidden width; 0: the projector's

    RENAMED = {}

    def __init__(self, dim: int, hidden: int, ctx: MethodContext, settings: Settings):
        super().__init__(dim, hidden, ctx.online, settings.momentum, ctx.total_steps, ctx.compile)
        self.temperature, self.impl, self.operand_dtype = settings.temperature, ctx.impl, ctx.operand_dtype

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        require(0 <= settings.momentum <= 1, "method.mocov3.momentum", settings.momentum, "must be in [0, 1]")
        check_temperature("method.mocov3.temperature", settings.temperature)
        int_in("method.mocov3.predictor_hidden", settings.predictor_hidden, 0, cls.MAX_HIDDEN)

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> MoCoV3Head:
        return cls(ctx.embed_dim, settings.predictor_hidden or ctx.hidden_dim, ctx, settings)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: online projections, targets: the momentum encoder's projections of the unmixed rows (V*B, D)."""
        if targets is None:
            raise ValueError("mocov3: the loss needs the momentum encoder's projections (targets)")
        return mocov3_loss(self.predictor(z.float()), targets, layout, self.temperature, self.impl,
                           self.operand_dtype)
