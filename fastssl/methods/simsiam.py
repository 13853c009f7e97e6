"""SimSiam (Chen and He 2021): a predictor regresses the stop-gradient projection of another view.

One network: encoder + projector (the trainer's SSLNet) and this head's predictor MLP h; no momentum
encoder, no negatives. With p_v = h(z_v) and D(p, z) = -cos(p, stopgrad(z)), the loss for V views is
the mean over images and ordered pairs of different views (v, w) of D(p_v, z_w); for V = 2 exactly
SimSiam's symmetric D(p_1, z_2) / 2 + D(p_2, z_1) / 2. The stop-gradient is what keeps the
representation from collapsing: the targets z_w send no gradient back.

BYOL's loss is 2 x the mean of ||p/|p| - t/|t| ||^2 = 2 - 2 cos(p, t) over the same pairs (its paper's
scale), so the loss is computed by byol.byol_loss (all pairs in O(V B D)) as byol_loss / 4 - 1: one
pair sum, not two.

Query mixing (task.query_mix) is refused: SimSiam's targets are the online network's own projections,
and under mixing the query views' projections are of mixed images, so a mixed query would have no
clean target and the support views would regress mixed images. BYOL and MoCo can mix because their
momentum network reads the unmixed views; here that would take a second forward of the online
network, whose BatchNorm running statistics it would move. Task rotation needs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastssl import config as config_mod
from fastssl.loaders.rules import int_in, require
from fastssl.models.projector import Projector
from fastssl.task.layout import TaskLayout

from . import register
from .base import Method, MethodContext
from .byol import byol_loss


def simsiam_loss(p: torch.Tensor, z: torch.Tensor, layout: TaskLayout) -> torch.Tensor:
    """p: predictions (V*B, D), z: projections (V*B, D), view-major; the mean of -cos(p_v(i), z_w(i))
    over images i and views v != w, z detached; float32 (float64 kept). No query mixing."""
    if layout.mix is not None:
        raise ValueError("simsiam: query mixing is not supported (see fastssl/methods/simsiam.py)")
    return byol_loss(p, z.detach(), layout) / 4 - 1


@register("simsiam")
class SimSiamHead(Method):
    """The predictor h (dim -> hidden -> dim: linear, BN, ReLU, linear, as SimSiam's) and the negative
    cosine loss with stop-gradient targets. The predictor's parameters join the optimizer; its BN
    normalises over all V*B rows of the task at once (SimSiam runs it per view)."""

    per_view_bn = True   # SimSiam's code runs the encoder once per view

    @dataclass
    class Settings:
        predictor_hidden: int = 0  # the predictor's bottleneck width; 0: projector_out / 4 (SimSiam: 2048 -> 512)

    MAX_HIDDEN = config_mod.MAX_DIM   # the projector's bound: one matrix at most 1 GiB in fp32

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.predictor = Projector(dim, hidden, dim, layers=2, batch_norm=True)

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        int_in("method.simsiam.predictor_hidden", settings.predictor_hidden, 0, cls.MAX_HIDDEN)
        require(cfg.task.query_mix == "none", "task.query_mix", cfg.task.query_mix,
                "simsiam cannot mix queries: its targets are the online network's own projections, which "
                "under mixing are of mixed images (no clean target for a mixed query); use none, or a method "
                "with a momentum network (byol, moco)")

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> SimSiamHead:
        return cls(ctx.embed_dim, settings.predictor_hidden or max(1, ctx.embed_dim // 4))

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: the online projections of the global task (V*B, D); they are also the (detached) targets."""
        return simsiam_loss(self.predictor(z.float()), z, layout)
