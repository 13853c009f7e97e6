"""Prototypical Networks as an SSL head: each image is a class, its support views make its prototype."""
from __future__ import annotations

import torch
from torch import nn

from fastssl.kernels import sim_xent, unit_rows


class ProtoNetHead(nn.Module):
    """Queries classified among the B prototypes by squared Euclidean distance over temperature.

    Rows are view-major (row r is image r mod B); views [0, n_supp) are support, the rest queries.
    -||q - p||^2 / tau = (2 q.p - ||p||^2) / tau - ||q||^2 / tau, and the last term is constant per
    row, so the softmax is sim_xent with scale 2 / tau and col_bias -||p||^2 / tau: the (queries x B)
    distance matrix is never built.
    """

    def __init__(self, temperature: float, n_supp: int, impl: str = "auto"):
        super().__init__()
        self.temperature, self.n_supp, self.impl = temperature, n_supp, impl

    def forward(self, z: torch.Tensor, n_views: int) -> torch.Tensor:
        if not 1 <= self.n_supp < n_views or z.shape[0] % n_views:
            raise ValueError(f"protonet: {z.shape[0]} rows, {n_views} views, n_supp={self.n_supp}: need "
                             "1 <= n_supp < views and views dividing the row count")
        views = unit_rows(z).reshape(n_views, -1, z.shape[1])
        prototypes = views[:self.n_supp].mean(dim=0)
        queries = views[self.n_supp:].reshape(-1, z.shape[1])
        batch = prototypes.shape[0]
        targets = torch.arange(batch, device=z.device).repeat(n_views - self.n_supp)
        bias = -prototypes.pow(2).sum(dim=1) / self.temperature
        return sim_xent(queries, prototypes, scale=2.0 / self.temperature, col_bias=bias, targets=targets,
                        impl=self.impl)
