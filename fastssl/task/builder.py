"""Turns a loaded batch into the task the heads see: task augmentation by
rotation, then query mixing, and the layout (support / query views, mixing partners and lam).

Both tricks run on the device after loading, so every backend gets them alike, and both are pure
functions of (seed, epoch, dataset index) or (seed, step), so a resumed run builds the same tasks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .layout import TaskLayout
from .query_mix import QueryMixer
from .rotation import TaskRotation


@dataclass
class TaskBatch:
    """views: what the online network sees; clean_views: the same before query mixing (what a method's
    target network reads); rotations: (B,) quarter turns per image under task augmentation, else None."""

    views: list[torch.Tensor]
    clean_views: list[torch.Tensor]
    layout: TaskLayout
    rotations: torch.Tensor | None


class TaskBuilder:
    """`blocks`: how many independent groups of consecutive images one rank's batch forms for the method
    (Method.mix_blocks); query mixing draws every partner from its image's own group."""

    def __init__(self, task, num_samples: int, seed: int, blocks: int = 1, global_views: int = 0):
        """`task`: the config's task section (views' roles and tricks); `global_views`: how many of the
        first views are global under multi-crop (augment.crops; 0: all)."""
        self.n_supp, self.n_query, self.global_views = task.n_supp, task.n_query, global_views
        p = task.rotation_p
        self.rotation = TaskRotation(p, num_samples, seed) if p > 0 else None
        self.mixer = (QueryMixer(task.query_mix, task.query_mix_p, task.query_mix_alpha, seed, blocks)
                      if task.query_mix != "none" else None)

    def build(self, views: list[torch.Tensor], index: torch.Tensor, epoch: int, step: int) -> TaskBatch:
        """The task of the batch whose samples sit at dataset positions `index`, at training step `step`."""
        if len(views) != self.n_supp + self.n_query:
            raise ValueError(f"task: {len(views)} views, but n_supp + n_query = {self.n_supp} + {self.n_query}")
        rotations = None
        if self.rotation is not None:
            rotations = self.rotation.rotations(epoch, index.to(views[0].device))
            views = self.rotation.apply(views, rotations)
        draw = None if self.mixer is None else self.mixer.draw(step, views[0].shape[0], views[0].shape[-2:])
        if draw is None:
            return TaskBatch(views, views, TaskLayout(self.n_supp, self.n_query, None, self.global_views), rotations)
        draw = dataclasses.replace(draw, partner=draw.partner.to(views[0].device))   # copied once, used twice
        mixed = QueryMixer.apply(views, self.n_supp, draw)
        return TaskBatch(mixed, views, TaskLayout(self.n_supp, self.n_query, draw, self.global_views), rotations)
