"""SimCLR's contrastive head: every image is its own class, its other views are the positives."""
from __future__ import annotations

import torch
from torch import nn

from fastssl.kernels import nt_xent


class ContrastiveHead(nn.Module):
    """NT-Xent over L2-normalised projections for any number of views >= 2 (DESIGN.md section 3)."""

    def __init__(self, temperature: float, impl: str = "auto"):
        super().__init__()
        self.temperature, self.impl = temperature, impl

    def forward(self, z: torch.Tensor, n_views: int) -> torch.Tensor:
        """z: (V*B, D), view-major rows; returns the scalar loss in float32."""
        return nt_xent(z, n_views, self.temperature, impl=self.impl)
