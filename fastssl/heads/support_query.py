"""The support/query split every meta-learning head shares: each image is a class, its first views
are the support set and the rest are queries (DESIGN.md section 3)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastssl.kernels import unit_rows


@dataclass
class Task:
    """support: (n_supp, B, D) unit rows, view-major; queries: (n_query * B, D); targets: the image of each query."""

    support: torch.Tensor
    queries: torch.Tensor
    targets: torch.Tensor

    @property
    def classes(self) -> int:
        return self.support.shape[1]


def split_views(z: torch.Tensor, n_views: int, n_supp: int, head: str) -> Task:
    """Unit-normalised rows of z (V*B, D), row r being image r mod B, split into support and queries."""
    if not 1 <= n_supp < n_views or z.shape[0] % n_views:
        raise ValueError(f"{head}: {z.shape[0]} rows, {n_views} views, n_supp={n_supp}: need "
                         "1 <= n_supp < views and views dividing the row count")
    views = unit_rows(z).reshape(n_views, -1, z.shape[1])
    batch = views.shape[1]
    targets = torch.arange(batch, device=z.device).repeat(n_views - n_supp)
    return Task(views[:n_supp], views[n_supp:].reshape(-1, z.shape[1]), targets)
