"""The contract between the trainer and a self-supervised method: what the trainer calls, and when.

A method is an nn.Module: its parameters that require grad are trained with the encoder's, all its
state (buffers, frozen networks such as an EMA target) goes into the checkpoint's `method` entry.
Per step the trainer calls, in order:
- `begin_step(step)` before the forward (schedules of the step: a teacher's temperature, a frozen layer);
- `targets(task)` under autocast, after the online forward: rows the loss compares the online
  projections with that come from elsewhere (an EMA network's projections), or None;
- `rank_loss(z, layout, targets, rows)`: this rank's share of the scalar loss on the global task (every
  rank's rows gathered); `forward(z, layout, targets)` is the whole loss, which the default share divides
  by the world size (see `rank_loss` for how a method computes only its own rows);
- `after_step(step)` after the optimizer step (an EMA update);
and at log steps `logits(z, layout)` for the task accuracy, where the method classifies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.task.builder import TaskBatch
from fastssl.task.layout import RankRows, TaskLayout, TaskLogits


@dataclass(frozen=True)
class MethodContext:
    """What a method may need from the run besides its settings."""

    embed_dim: int                                  # the projector's output width: the rows' dimension
    hidden_dim: int = 0                             # the projector's hidden width (a predictor's default)
    impl: str = "auto"                              # method.loss_impl (set by build_method): the loss's kernels
    online: nn.Module | None = None                 # encoder + projector, for methods that keep a copy of it
    operand_dtype: torch.dtype = torch.float32      # what similarity losses feed the fused kernel
    total_steps: int = 1                            # the run's length, for schedules over it
    steps_per_epoch: int = 1                        # for schedules the literature states in epochs
    global_views: int = 2                           # views at full resolution (multi-crop's first group)
    seed: int = 0                                   # train.seed: a method's per-step draws (a BN shuffle)
    compile: bool = False                           # torch.compile the method's own networks too


@dataclass
class NoSettings:
    """The settings of a method that has none."""


class Method(nn.Module):
    """Base of every method; `name` is set by `register`.

    `Settings`: the dataclass of the config section `method.<name>` (fields with defaults, typed as the
    config's own: int, float, bool, str, Literal); `RENAMED`: flat keys of older configs (method.svm_c)
    -> the field that replaced them, so those configs fail naming the new key.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    RENAMED: ClassVar[dict[str, str]] = {}
    # Whether `rank_loss` computes this rank's rows only; the trainer then averages the method's own
    # parameters' gradients over the ranks (they differ), as DDP does the encoder's.
    splits_rows: ClassVar[bool] = False
    # The submodule of the method's state holding a momentum copy of the online SSLNet (encoder +
    # projector), for methods that keep one; `fastssl export --network target` exports it without
    # knowing the method.
    momentum_network: ClassVar[str | None] = None
    # Whether the method's original code runs the network once per view (BatchNorm statistics per view):
    # what model.per_view_bn null resolves to. False: one forward per crop size.
    per_view_bn: ClassVar[bool] = False

    @classmethod
    def build(cls, settings: Any, ctx: MethodContext) -> Method:
        """The method from its settings and the run's context."""
        raise NotImplementedError

    @classmethod
    def check(cls, settings: Any, cfg, world: int) -> None:
        """The method's rules on its settings and the run config `cfg` (a ConfigError naming the key as
        `method.<name>.<field>`); run before any work."""
        return None

    def begin_step(self, step: int) -> None:
        return None

    def targets(self, task: TaskBatch) -> torch.Tensor | None:
        """Rows from elsewhere the loss compares with, view-major: of every view, or of the global views
        only (TaskLayout.n_global, a teacher's); the trainer gathers them over the ranks as they are."""
        return None

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def rank_loss(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None,
                  rows: RankRows) -> torch.Tensor:
        """This rank's share of `forward(z, layout, targets)`, the loss on the global task: the ranks'
        shares sum to it (the logged loss is their all-reduced sum).

        The trainer backpropagates world x the share. The gather's backward sums, for each rank's rows,
        the gradients every rank's loss sent them, and DDP averages the encoder's gradients over the
        ranks: the update is the gradient of the global loss.

        This default cannot split: every rank computes the whole loss and takes 1 / world of it, so the
        world copies backpropagated add up to world x the gradient, which DDP's average divides back;
        the method's own parameters get the same gradient on every rank. A method that can split sets
        `splits_rows` and computes only the terms of `rows`' rows (its queries), against every rank's
        gathered rows as columns, summed and divided by the global task's number of terms (its mean
        loss's share); on one process (`rows.whole`) it returns `self(z, layout, targets)`.
        """
        return self(z, layout, targets) / rows.world

    def after_step(self, step: int) -> None:
        return None

    def mix_blocks(self, world: int) -> int:
        """Groups of consecutive images one rank's share of the batch forms (query mixing finds each
        image's partner in its own group): 1 unless the method splits the batch into tasks."""
        return 1

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits | None:
        return None
