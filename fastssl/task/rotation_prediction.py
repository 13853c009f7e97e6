"""Rotation prediction: an auxiliary 4-way classifier on the projection predicts by how many quarter
turns each view's image was rotated by task augmentation (RotNet's pretext task, added to the method's
loss with weight task.rotation_weight).

Auxiliary losses share one contract with the trainer, which names none of them: `metric` (the name
its term is logged under), `weight`, `splits_rows` and `term(z, layout, task, rows)`, this rank's share
of the unweighted loss on the global task, as a method's `rank_loss` (fastssl/methods/base.py): the
ranks' shares sum to the global term, and with `splits_rows` the trainer averages the auxiliary's
parameters' gradients over the ranks. `build_auxiliaries` makes those the config switches on.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .builder import TaskBatch
from .layout import RankRows, TaskLayout, mixed_loss

QUARTER_TURNS = 4


class RotationPredictor(nn.Module):
    """A linear 4-way classifier on the projector's output; fp32 like the methods' losses."""

    metric = "rotation_loss"
    splits_rows = True

    def __init__(self, dim: int, weight: float = 1.0):
        super().__init__()
        self.classifier = nn.Linear(dim, QUARTER_TURNS)
        self.weight = weight

    def term(self, z: torch.Tensor, layout: TaskLayout, task: TaskBatch, rows: RankRows) -> torch.Tensor:
        """This rank's share of the loss on the global task's rows z (layout `layout`): every row's term
        is its own, so a rank takes its own rows of z (their gradient still flows through the gather) with
        its own task's layout and rotations, and their mean over world (every rank holds as many rows)."""
        if rows.whole:
            return self(z, layout, task.rotations)
        return self(rows.own(z, layout.n_views), task.layout, task.rotations) / rows.world

    def forward(self, z: torch.Tensor, layout: TaskLayout, rotations: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every row's predicted rotation; rotations: (B,) quarter turns per image.

        A mixed query of image i holds lam of i and 1 - lam of partner[i]: its target is their
        rotations weighted alike (mixed_loss), as for the heads' class targets.
        """
        batch = layout.batch(z, "rotation prediction")
        if rotations.shape != (batch,):
            raise ValueError(f"rotation prediction: rotations {tuple(rotations.shape)} must be one per image ({batch},)")
        logits = self.classifier(z.to(self.classifier.weight.dtype))   # fp32 under autocast-produced half z
        return mixed_loss(lambda images: F.cross_entropy(logits, rotations[images]),
                          layout.row_images(batch, z.device), layout, layout.n_supp * batch)


def build_auxiliaries(task_cfg, embed_dim: int) -> nn.ModuleList:
    """The auxiliary losses the task config switches on, for rows of width `embed_dim`."""
    auxiliaries = nn.ModuleList()
    if task_cfg.rotation_weight > 0:
        auxiliaries.append(RotationPredictor(embed_dim, task_cfg.rotation_weight))
    return auxiliaries
