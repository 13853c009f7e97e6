"""A run's checkpoint, gathered from the components that own its parts: each registers once, by name.

Saving asks every component for its state_dict; restoring first checks that the checkpoint holds an
entry for every component and none that no component claims (naming them), then hands each its own
(one that does not fit, e.g. another model width, is one error naming the component, key and shapes).
The component list is the trainer's registrations, written once, not a list of keys kept beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fastssl.checkpoint import CheckpointError, capture_rng, load_state, restore_rng

NOT_COMPONENTS = ("config", "format", "data")   # stored beside the components: the run config (read before
                                                # they exist, fastssl/compat.py), the file format tag
                                                # (checkpoint.py) and the training data's fingerprint


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


class RunState:
    def __init__(self):
        self._parts: dict[str, Stateful] = {}

    def register(self, name: str, part: Stateful) -> None:
        if name in self._parts or name in NOT_COMPONENTS:
            raise ValueError(f"checkpoint component {name!r}: registered twice")
        self._parts[name] = part

    def capture(self) -> dict:
        return {name: part.state_dict() for name, part in self._parts.items()}

    def restore(self, state: dict, source: str) -> None:
        missing = [name for name in self._parts if name not in state]
        extra = [name for name in state if name not in self._parts and name not in NOT_COMPONENTS]
        if missing or extra:
            found = "; ".join(f"{what}: {', '.join(names)}" for what, names in
                              (("lacks", missing), ("holds unknown", extra)) if names)
            raise CheckpointError(f"checkpoint {source!r}: does not match this run's components ({found}); "
                                  "written by another fastssl version or another method?")
        for name, part in self._parts.items():
            load_state(part, state[name], source, f"component {name!r} does not fit this run")


class GlobalRng:
    """Every global RNG a training step may touch (torch, CUDA, numpy, Python), as a component."""

    def state_dict(self) -> dict:
        return capture_rng()

    def load_state_dict(self, state: dict) -> None:
        restore_rng(state)


@dataclass
class RunCounters:
    """The run's own progress: the step, the random-init kNN score, whether the run has ended, how many
    metrics lines belong to it, and the log interval's loss sums (`sums`: "loss" and each auxiliary
    loss's metric, on the device, so adding to them never synchronises)."""

    device: torch.device
    step: int = 0
    knn_start: float = math.nan
    loss_count: int = 0
    finished: bool = False
    metrics_lines: int = 0
    world: int = 1           # processes the run was trained with (torchrun's world size)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, name: str, value: torch.Tensor) -> None:
        if name not in self.sums:
            self.sums[name] = torch.zeros((), device=self.device)
        self.sums[name] += value.detach()

    def state_dict(self) -> dict:
        return {"step": self.step, "knn_start": self.knn_start, "loss_count": self.loss_count,
                "finished": self.finished, "metrics_lines": self.metrics_lines, "world": self.world,
                "sums": {name: value.cpu() for name, value in self.sums.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.knn_start, self.loss_count = state["step"], state["knn_start"], state["loss_count"]
        self.finished, self.metrics_lines = state["finished"], state["metrics_lines"]
        self.world = state.get("world", self.world)   # older checkpoints did not record it
        self.sums = {name: value.to(self.device) for name, value in state["sums"].items()}
