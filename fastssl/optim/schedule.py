"""Linear warm-up then cosine decay to 0 (Goyal et al. 2017; Loshchilov & Hutter 2017), as SimCLR.

Warm-up keeps the first large-batch LARS steps from blowing up statistics of an untrained network;
cosine decay anneals to 0 exactly at the last step of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Warm-up: base_lr * (step + 1) / warmup_steps for step < warmup_steps, so the first step already
    moves (base_lr / warmup_steps) and step warmup_steps - 1 reaches base_lr. Decay: base_lr *
    (1 + cos(pi * t)) / 2 with t = (step - warmup_steps) / (total_steps - warmup_steps), which is
    base_lr / 2 at the middle of the decay and 0 at step total_steps and after. A run shorter than
    its warm-up stops while still warming up.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps!r}: must be >= 0")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r}: must be >= 1")
    if step >= total_steps:
        return 0.0
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """The multiplier lr_at(step, 1, ...) as an object: LambdaLR saves an object's attributes in its
    state_dict (a plain function it drops), so warm-up and total steps travel with checkpoints."""

    def __init__(self, warmup_steps: int, total_steps: int):
        lr_at(0, 1.0, warmup_steps, total_steps)  # validate now, not at the first step
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return lr_at(step, 1.0, self.warmup_steps, self.total_steps)


def build_scheduler(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Scales every param group's initial lr by the schedule; call `.step()` after each optimizer step."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))


@dataclass(frozen=True)
class Retargeted:
    old_total: int
    new_total: int
    old_lr: float     # the first param group's lr for the next step, before and after
    new_lr: float


def retarget(scheduler: LambdaLR, warmup_steps: int, total_steps: int) -> Retargeted | None:
    """Point a restored scheduler at this run's length. A checkpoint brings its WarmupCosine with the
    old warm-up and total, so a run extended by a few epochs would go on at the old schedule's lr 0:
    instead the schedule is recomputed for the new length and applied from the restored step on.
    None if nothing changed."""
    schedule = scheduler.lr_lambdas[0]
    if (schedule.warmup_steps, schedule.total_steps) == (warmup_steps, total_steps):
        return None
    old_total, old_lr = schedule.total_steps, scheduler.optimizer.param_groups[0]["lr"]
    for fn in scheduler.lr_lambdas:
        fn.warmup_steps, fn.total_steps = warmup_steps, total_steps
    step = scheduler.last_epoch
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
    return Retargeted(old_total, total_steps, old_lr, scheduler.optimizer.param_groups[0]["lr"])
