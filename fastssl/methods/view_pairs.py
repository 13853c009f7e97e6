"""What the methods that compare views two at a time share (Barlow Twins, VICReg): their loss for V views
is the mean of a two-view loss over the V (V - 1) / 2 unordered pairs of views, each pair a (B, D)
block of the view-major task rows; for V = 2 it is the papers' loss itself. Query mixing is refused:
a mixed query view is of two images, so it has no partner row to agree with."""
from __future__ import annotations

from typing import Callable

import torch

from fastssl.loaders.rules import require
from fastssl.task.layout import TaskLayout


def mean_over_view_pairs(z: torch.Tensor, layout: TaskLayout, name: str,
                         pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """z: (V*B, D) view-major projections; the mean of pair_loss(z_v, z_w) over views v < w, in float32
    (float64 kept)."""
    if layout.mix is not None:
        raise ValueError(f"{name}: query mixing is not supported (fastssl/methods/view_pairs.py)")
    views = z.float() if z.dtype != torch.float64 else z
    blocks = views.unflatten(0, (layout.n_views, layout.batch(z, name)))
    pairs = [(v, w) for v in range(layout.n_views) for w in range(v + 1, layout.n_views)]
    return torch.stack([pair_loss(blocks[v], blocks[w]) for v, w in pairs]).mean()


def refuse_query_mix(name: str, cfg, why: str = "compares each image's views in pairs") -> None:
    require(cfg.task.query_mix == "none", "task.query_mix", cfg.task.query_mix,
            f"{name} {why}, and a mixed query view is of two images (no partner view to agree with); use none")
