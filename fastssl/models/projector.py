"""SimCLR's projection head g: the contrastive loss is applied to z = g(h), not to h.

Chen et al. 2020 found that representations before a non-linear projection keep more information
(colour, orientation) that the contrastive objective teaches the projection to discard, so h is
what evaluation uses and z only feeds the loss.
"""
from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """`layers` linear layers (in -> hidden -> ... -> out) with BN + ReLU between them.

    A linear layer followed by BN has no bias: BN subtracts the batch mean, which would cancel it.
    The last layer is plain linear (SimCLR v1), or linear + BN with out_bn (SimCLR v2, and lightly's
    and LightlyTrain's SimCLR heads). With layers=1 the head is a single linear map.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batch_norm: bool = True,
                 out_bn: bool = False):
        if layers < 1:
            raise ValueError(f"layers={layers!r}: must be >= 1")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        modules: list[nn.Module] = []
        for i in range(layers):
            last = i == layers - 1
            normed = out_bn if last else batch_norm
            modules.append(nn.Linear(dims[i], dims[i + 1], bias=not normed))
            if normed:
                modules.append(nn.BatchNorm1d(dims[i + 1]))
            if not last:
                modules.append(nn.ReLU(inplace=True))
        super().__init__(*modules)
        self.out_dim = out_dim
