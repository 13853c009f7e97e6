"""Momentum networks shared by the methods that keep one (BYOL's target, MoCo's key encoder).

A momentum network is a copy of the online encoder + projector that autograd never touches and that
follows the online weights by an exponential moving average after every optimizer step. This module
registers no method: it holds the pieces, each method decides its schedule and what it reads from
the copy.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """BYOL's target momentum at step k of K: 1 - (1 - base) (cos(pi k / K) + 1) / 2 (base at 0, 1 at K)."""
    k = min(step, total_steps) / max(total_steps, 1)
    return 1 - (1 - base) * (math.cos(math.pi * k) + 1) / 2


def make_target(online: nn.Module) -> nn.Module:
    """The momentum network: a copy of `online` (encoder + projector) that autograd never touches.

    It stays in training mode (BYOL's target and MoCo's key encoder normalise with batch statistics);
    its BN running statistics are its own, updated by its forward passes, and only its parameters
    follow the EMA.
    """
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target <- tau * target + (1 - tau) * online for every pair, in place: two multi-tensor launches,
    tau a host float (a schedule is a function of the step), so no device-to-host sync."""
    torch._foreach_mul_(target, tau)
    torch._foreach_add_(target, online, alpha=1 - tau)
