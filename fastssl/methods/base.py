"""The contract between the trainer and a self-supervised method: what the trainer calls, and when.

A method is an nn.Module: its parameters that require grad are trained with the encoder's, all its
state (buffers, frozen networks such as BYOL's target) goes into the checkpoint's `method` entry.
Per step the trainer calls, in order:
- `targets(task)` under autocast, after the online forward: rows the loss compares the online
  projections with that come from elsewhere (an EMA network's projections), or None;
- `forward(z, layout, targets)`: the scalar loss on the global task (every rank's rows gathered);
- `after_step(step)` after the optimizer step (an EMA update);
and at log steps `logits(z, layout)` for the task accuracy, where the method classifies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fastssl.task.builder import TaskBatch
from fastssl.task.layout import TaskLayout, TaskLogits


@dataclass(frozen=True)
class MethodContext:
    """What a method may need from the run besides its settings."""

    embed_dim: int                                  # the projector's output width: the rows' dimension
    online: nn.Module | None = None                 # encoder + projector, for methods that keep a copy of it
    operand_dtype: torch.dtype = torch.float32      # what similarity losses feed the fused kernel
    total_steps: int = 1                            # the run's length, for schedules over it
    compile: bool = False                           # torch.compile the method's own networks too


class Method(nn.Module):
    """Base of every method; `name` is set by `register`."""

    name: ClassVar[str] = ""

    @classmethod
    def build(cls, cfg, ctx: MethodContext) -> Method:
        """The method from the run's method config and context."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg, world: int) -> None:
        """Rules the method adds to the run config `cfg` (ConfigError naming the key); run before any work."""
        return None

    def targets(self, task: TaskBatch) -> torch.Tensor | None:
        return None

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        return None

    def mix_blocks(self, world: int) -> int:
        """Groups of consecutive images one rank's share of the batch forms (query mixing finds each
        image's partner in its own group): 1 unless the method splits the batch into tasks."""
        return 1

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits | None:
        return None
