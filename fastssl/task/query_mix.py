"""Query mixing: CutMix or Mixup between the query views of different images.

With probability p per batch, every query view of image i is mixed with the same view of image
partner[i]: Mixup blends the pixels, lam x_i + (1 - lam) x_partner; CutMix pastes a box of the
partner covering a share 1 - lam of the image (lam recomputed from the box after clipping to the
image, as in CutMix). lam ~ Beta(alpha, alpha), one lam, one partner permutation and one box per
batch; support views are left alone. Partners are drawn within blocks of B / blocks consecutive
images, so a head that splits the batch into tasks (svm) always finds a partner in the same task.

Every draw is a function of (seed, step) on the host (numpy), so a resumed run mixes exactly as an
uninterrupted one; the pixel work is one gather per query view on the device, no host sync.
"""
from __future__ import annotations

import numpy as np
import torch

from fastssl.config import QUERY_MIXES
from fastssl.loaders.sampler import derive_seed

from .layout import QueryMix



class QueryMixer:
    def __init__(self, mode: str, p: float, alpha: float, seed: int, blocks: int = 1):
        if mode not in QUERY_MIXES[1:]:
            raise ValueError(f"query mixing mode {mode!r}: must be one of {', '.join(QUERY_MIXES[1:])}")
        if not (0.0 <= p <= 1.0 and alpha > 0 and blocks >= 1):
            raise ValueError(f"query mixing p={p}, alpha={alpha}, blocks={blocks}: need p in [0, 1], "
                             "alpha > 0, blocks >= 1")
        self.mode, self.p, self.alpha, self.seed, self.blocks = mode, p, alpha, seed, blocks

    def draw(self, step: int, batch: int, side: tuple[int, int]) -> QueryMix | None:
        """The mixing of training step `step` for a batch of `batch` images of side (H, W), partners on the
        host; None: no mixing."""
        if batch % self.blocks:
            raise ValueError(f"query mixing: {self.blocks} task blocks must divide the batch of {batch} images")
        rng = np.random.default_rng(derive_seed("query-mix", self.seed, step))
        if rng.random() >= self.p:
            return None
        lam = float(rng.beta(self.alpha, self.alpha))
        block = batch // self.blocks
        local = rng.permuted(np.tile(np.arange(block), (self.blocks, 1)), axis=1)
        partner = torch.from_numpy((local + block * np.arange(self.blocks)[:, None]).reshape(-1))
        if self.mode == "mixup":
            return QueryMix(partner, lam)
        h, w = side
        cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
        return QueryMix(partner, 1 - (y1 - y0) * (x1 - x0) / (h * w), (y0, y1, x0, x1))

    @staticmethod
    def apply(views: list[torch.Tensor], n_supp: int, draw: QueryMix) -> list[torch.Tensor]:
        """Views with every query view (index >= n_supp) mixed as `draw` says; support views unchanged."""
        out = list(views[:n_supp])
        partner = draw.partner.to(views[0].device)   # one copy for every query view (none if already there)
        for view in views[n_supp:]:
            other = view.index_select(0, partner)
            if draw.box is None:
                out.append(torch.lerp(other, view, draw.lam))   # lam view + (1 - lam) other
            else:
                y0, y1, x0, x1 = draw.box
                mixed = view.clone()
                mixed[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
                out.append(mixed)
        return out
