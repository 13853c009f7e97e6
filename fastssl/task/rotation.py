"""Task augmentation by large rotations: with probability p an image is rotated
by k x 90 degrees (k in 1..3) in all its views, and so becomes a new class for the heads.

Applied on the device after loading, so every backend gets it alike. Each sample's k is a pure
function of (seed, epoch, its dataset index): an epoch table drawn once on the host from a CPU
generator and gathered by index, so it is the same whatever the world size, batch composition or
resume point, and costs no host sync per batch. A rotated image never shares a task with its
unrotated self: a batch holds each sample once, and all its views get the same k.
"""
from __future__ import annotations

import torch

from fastssl.loaders.sampler import cpu_generator


class TaskRotation:
    """Draws and applies per-sample rotations; `rotations` reports each sample's k for the heads."""

    def __init__(self, p: float, num_samples: int, seed: int):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"task rotation probability {p!r}: must be in [0, 1]")
        self.p, self.num_samples, self.seed = p, num_samples, seed
        self._epoch, self._table = None, None

    def rotations(self, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """(B,) int64 k in 0..3 of the samples at dataset positions `index`, on index's device."""
        if self._epoch != epoch or self._table.device != index.device:
            generator = cpu_generator("task-rotation", self.seed, epoch)
            rotate = torch.rand(self.num_samples, generator=generator) < self.p
            k = torch.randint(1, 4, (self.num_samples,), generator=generator)
            self._table, self._epoch = torch.where(rotate, k, 0).to(index.device), epoch
        return self._table[index]

    @staticmethod
    def apply(views: list[torch.Tensor], rotations: torch.Tensor) -> list[torch.Tensor]:
        """Every view of sample i rotated by rotations[i] x 90 degrees (as torch.rot90 on H, W).

        One gather per view through per-sample pixel maps: exact (a permutation of pixels), and no
        boolean indexing, which would sync the host. Square images only (a rotation keeps the shape).
        """
        out = []
        for view in views:
            b, c, h, w = view.shape
            if h != w:
                raise ValueError(f"task rotation needs square views, got {h}x{w}")
            grid = torch.arange(h * w, device=view.device).reshape(h, w)
            maps = torch.stack([torch.rot90(grid, k, dims=(0, 1)).flatten() for k in range(4)])
            source = maps[rotations][:, None, :].expand(b, c, h * w)
            rotated = view.reshape(b, c, h * w).gather(2, source).reshape(b, c, h, w)
            out.append(rotated.contiguous(memory_format=torch.channels_last))
        return out
