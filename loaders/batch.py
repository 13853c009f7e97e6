"""The Batch every backend yields, and the loader protocol around it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass
class Batch:
    """V augmented views of the same B images, on the training device.

    views: V tensors (B, 3, H, W), float32, normalised, channels_last memory format.
    labels: (B,) int64 class labels (never used by self-supervised losses; kept for monitoring).
    index: (B,) int64 positions of the images in the dataset split.
    """

    views: list[torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor


class Loader(Protocol):
    """Yields one epoch of this rank's Batches; resumable at any batch boundary."""

    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...                      # batches per epoch for this rank
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict: ...                  # {"epoch": int, "batch": int, ...}
    def load_state_dict(self, state: dict) -> None: ...
