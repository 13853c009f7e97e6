"""BYOL (Grill et al. 2020): an online predictor regresses an EMA target's projection of another view.

Online network = encoder + projector (the trainer's SSLNet) + this head's predictor MLP; target
network = an exponential moving average of encoder + projector, never trained by gradient. A term
for images i and an ordered pair of different views (v, w) is the normalised MSE
`||p_v/|p_v| - t_w/|t_w| ||^2 = 2 - 2 cos(p_v, t_w)`, averaged over the images. The loss is at the
paper's scale: for two views its symmetrised sum L + L~ (both ordered pairs), for V views the mean of
that sum over the V (V - 1) / 2 unordered pairs = 2 x the mean over the V (V - 1) ordered pairs.
The scale is what BYOL's published learning rate and weight decay were tuned at. fastssl's earlier
loss was the mean over ordered pairs, half this one; a run that must repeat one trained with it keeps
its updates at half optim.lr and twice optim.weight_decay and optim.trust_coefficient (LARS), at
half optim.lr and twice optim.weight_decay (SGD), and unchanged (AdamW, up to its eps): see
configs/heads/byol.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastssl import config as config_mod
from fastssl.loaders.rules import int_in, require
from fastssl.models.projector import Projector
from fastssl.task.builder import TaskBatch
from fastssl.task.layout import TaskLayout

from . import register
from .base import Method, MethodContext
from .momentum import ema_update_, make_target, momentum_at


def byol_loss(p: torch.Tensor, t: torch.Tensor, layout: TaskLayout) -> torch.Tensor:
    """p: predictions (V*B, D), t: target projections (V*B, D), view-major rows; scalar float32 (float64
    kept): 2 x the mean over images and ordered pairs v != w of 2 - 2 cos(p_v, t_w) (module docstring).

    With unit rows, sum over v != w of p_v . t_w = (sum_v p_v) . (sum_w t_w) - sum_v p_v . t_v,
    so all V (V - 1) pairs cost O(V B D), not O(V^2 B D). Under query mixing the target sees the
    unmixed views and a mixed query of image i regresses lam t(i) + (1 - lam) t(partner[i]): the
    loss 2 - 2 p.t is linear in t, so that is exactly lam L(i) + (1 - lam) L(partner[i]).
    """
    if p.shape != t.shape:
        raise ValueError(f"byol: predictions {tuple(p.shape)} and targets {tuple(t.shape)} must have equal shapes")
    batch, views, n_supp = layout.batch(p, "byol"), layout.n_views, layout.n_supp
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    pn = F.normalize(p.to(dtype), dim=1).view(views, batch, -1)
    tn = F.normalize(t.detach().to(dtype), dim=1).view(views, batch, -1)
    cross = (pn[:n_supp].sum(0) * tn.sum(0)).sum() - (pn[:n_supp] * tn[:n_supp]).sum()
    if layout.mix is not None:
        tn = layout.mix.lam * tn + (1 - layout.mix.lam) * tn[:, layout.mix.partner]
    cross = cross + (pn[n_supp:].sum(0) * tn.sum(0)).sum() - (pn[n_supp:] * tn[n_supp:]).sum()
    pair_mean = 2 - 2 * cross / (views * (views - 1) * batch)
    return 2 * pair_mean


@register("byol")
class BYOLHead(Method):
    """The predictor q (dim -> hidden -> dim, BN + ReLU between), the EMA target network and the
    normalised-MSE loss.

    Like the other methods' losses it runs outside autocast, in fp32 (the predictor is a few small
    matmuls); the predictor's parameters join the optimizer. The target (a frozen copy of encoder +
    projector, given when built from a run) is part of the method's state; its momentum follows
    `momentum_at` over the run's `total_steps` from `momentum`.
    """

    per_view_bn = True   # BYOL's code runs the online and target networks once per view

    @dataclass
    class Settings:
        momentum: float = 0.996    # target EMA momentum at step 0; rises to 1 by a cosine over the run
        predictor_hidden: int = 0  # the predictor's hidden width; 0: the projector's (as in BYOL)

    RENAMED = {"byol_momentum": "momentum", "predictor_hidden": "predictor_hidden"}
    momentum_network = "target"
    MAX_HIDDEN = config_mod.MAX_DIM   # the projector's bound: one matrix at most 1 GiB in fp32

    def __init__(self, dim: int, hidden: int, online: nn.Module | None = None, momentum: float = 0.996,
                 total_steps: int = 1, compile: bool = False):
        super().__init__()
        self.predictor = Projector(dim, hidden, dim, layers=2, batch_norm=True)
        self.momentum, self.total_steps = momentum, total_steps
        if online is not None:
            self.target = make_target(online)
            # Plain attributes, not submodules: the online network is the trainer's, and a compiled
            # wrapper of the target would put the target's weights into the state dict twice.
            self.__dict__["_target_forward"] = torch.compile(self.target) if compile else self.target
            self._pairs = (list(self.target.parameters()), list(online.parameters()))

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        require(0 <= settings.momentum <= 1, "method.byol.momentum", settings.momentum, "must be in [0, 1]")
        int_in("method.byol.predictor_hidden", settings.predictor_hidden, 0, cls.MAX_HIDDEN)

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> BYOLHead:
        hidden = settings.predictor_hidden or ctx.hidden_dim
        return cls(ctx.embed_dim, hidden, ctx.online, settings.momentum, ctx.total_steps, ctx.compile)

    @torch.no_grad()
    def targets(self, task: TaskBatch) -> torch.Tensor:
        """The target's projections of the views before query mixing (view-major, like z)."""
        return self._target_forward(task.clean_views)[1]

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: online projections, targets: the target's projections of the same (unmixed) rows (V*B, D)."""
        if targets is None:
            raise ValueError("byol: the loss needs the target network's projections (targets)")
        return byol_loss(self.predictor(z.float()), targets, layout)

    def after_step(self, step: int) -> None:
        """The target follows the online network, on the device; tau is a host float of the step."""
        ema_update_(*self._pairs, momentum_at(step, self.total_steps, self.momentum))
