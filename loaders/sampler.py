"""The epoch order every backend shares, and where a loader stands in it.

Batch b of epoch e is the slice [b*G, (b+1)*G) of a permutation drawn from (seed, e), G the global
batch; rank r of `world` takes the r-th of its `world` equal parts. So the order is a pure function of
(seed, epoch, batch, rank, world), a global batch holds the same images whatever the world size, and a
run resumes at any batch boundary from three integers.
"""
from __future__ import annotations

import hashlib

import torch

from .datasets.base import DataError


def derive_seed(*parts: int | str) -> int:
    """A 64-bit seed from a tuple of ints and tags (a hash, so nearby tuples give unrelated streams).

    Integer-likes (numpy ints, 0-d tensors) count as the int they hold, so callers cannot drift
    apart by passing the same number in different types.
    """
    key = tuple(p if isinstance(p, str) else int(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")


def cpu_generator(*parts: int | str) -> torch.Generator:
    """A fresh CPU generator seeded from `parts` (see derive_seed)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


class ShardedSampler:
    """Per-epoch permutation of range(num_samples), cut into full global batches, split by rank.

    The remainder (num_samples mod global_batch) is dropped each epoch (a different remainder every
    epoch, since the permutation changes), so every rank gets the same number of full batches.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank={rank}, world={world}: need world >= 1 and 0 <= rank < world")
        if global_batch < 1 or global_batch % world:
            raise ValueError(f"loader.batch_size={global_batch}: the global batch must be a positive "
                             f"multiple of the world size ({world})")
        if num_samples < global_batch:
            raise DataError(f"dataset has {num_samples} images, fewer than one global batch "
                            f"(loader.batch_size={global_batch}): an epoch would have no batch")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world = rank, world
        self.seed = seed
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    @property
    def num_batches(self) -> int:
        return self.num_samples // self.global_batch

    @property
    def rank_batch(self) -> int:
        return self.global_batch // self.world

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch `epoch` (CPU int64; the last epoch's is cached)."""
        key = (self.seed, epoch)
        if self._cached is None or self._cached[0] != key:
            order = torch.randperm(self.num_samples, generator=cpu_generator("order", *key))
            self._cached = (key, order)
        return self._cached[1]

    def global_indices(self, epoch: int, batch: int) -> torch.Tensor:
        """All ranks' images of global batch `batch`, rank-major (a copy: callers may keep or edit it)."""
        if not 0 <= batch < self.num_batches:
            raise IndexError(f"batch {batch} out of range: an epoch has {self.num_batches} batches")
        return self.epoch_order(epoch)[batch * self.global_batch:(batch + 1) * self.global_batch].clone()

    def rank_slice(self) -> slice:
        """This rank's part of a global batch (of indices or of anything drawn per global sample)."""
        return slice(self.rank * self.rank_batch, (self.rank + 1) * self.rank_batch)

    def indices(self, epoch: int, batch: int) -> torch.Tensor:
        """This rank's images of batch `batch` of epoch `epoch` (CPU int64, length rank_batch)."""
        return self.global_indices(epoch, batch)[self.rank_slice()]


class EpochCursor:
    """Where a loader stands: the epoch and the next batch to yield; the Loader resume semantics.

    A batch counts as consumed once it has been yielded, so state_dict() taken while a training step
    holds batch b says "resume at b + 1". Yielding an epoch's last batch moves the cursor to
    (epoch + 1, 0): iterating again runs the next epoch. set_epoch(e) to another epoch starts it at
    batch 0; set_epoch to the current epoch keeps the position, so a trainer may call set_epoch(e)
    at the top of every epoch, resumed or not.
    """

    def __init__(self, sampler: ShardedSampler):
        self.sampler = sampler
        self.epoch, self.batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: must be >= 0")
        if epoch != self.epoch:
            self.epoch, self.batch = epoch, 0

    def advance(self) -> None:
        """Record that one more batch has been yielded."""
        self.batch += 1
        if self.batch == self.sampler.num_batches:
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where `state` was taken; its seed replaces the configured one."""
        missing = [k for k in ("epoch", "batch", "seed") if k not in state]
        if missing:
            raise ValueError(f"loader state {state!r}: missing {', '.join(missing)}")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch < self.sampler.num_batches:
            raise ValueError(f"loader state epoch={epoch}, batch={batch}: need epoch >= 0 and "
                             f"0 <= batch < {self.sampler.num_batches} (batches per epoch)")
        self.sampler.seed = int(state["seed"])
        self.epoch, self.batch = epoch, batch


class ShardedEpochs:
    """The position bookkeeping every backend shares: the Loader protocol minus iteration."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, rank: int, world: int):
        self.sampler = ShardedSampler(num_samples, global_batch, seed, rank, world)
        self.cursor = EpochCursor(self.sampler)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.cursor.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state)
