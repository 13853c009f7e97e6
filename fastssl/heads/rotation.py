"""Rotation prediction (DESIGN.md section 3): an auxiliary 4-way classifier on the projection predicts
by how many quarter turns each view's image was rotated by task augmentation (RotNet's pretext task,
added to the head's loss with weight method.rotation_weight)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fastssl.task.layout import TaskLayout, mixed_loss

QUARTER_TURNS = 4


class RotationPredictor(nn.Module):
    """A linear 4-way classifier on the projector's output; fp32 like the heads."""

    def __init__(self, dim: int):
        super().__init__()
        self.classifier = nn.Linear(dim, QUARTER_TURNS)

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
