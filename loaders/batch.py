"""The Batch every backend yields, and the loader protocol around it."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch


@dataclass
class Batch:
    """V augmented views of the same B images, on the training device.

    views: V tensors (B, 3, S_v, S_v), normalised, in the loader's dtype, channels_last, view-major; under
    multi-crop (augment.crops) view v has its crop group's side S_v, the global views first.
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


def views_label(sizes: Sequence[int], batch: int | None = None) -> str:
    """Runs of equal-sized views, as reports name a batch's shape: '2x32px+6x16px'; with `batch`, each
    run as views x batch x side: '2x256x32px+6x256x16px' (one size: the '2x256x32px' of single-size runs)."""
    runs = [(len(list(group)), side) for side, group in itertools.groupby(sizes)]
    middle = "" if batch is None else f"{batch}x"
    return "+".join(f"{count}x{middle}{side}px" for count, side in runs)
