"""The `tensor` backend: the whole split as uint8 on the device, batches gathered and augmented there.

No worker processes and no host-to-device image traffic after start-up: per batch, the host only
draws the permutation slice and the augmentation parameters (a few numbers per image).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .settings import AugmentConfig, LoaderConfig

from .augment import IMAGENET_MEAN, IMAGENET_STD, apply_params, sample_params, view_sizes
from .batch import Batch
from .datasets.base import ImageDataset
from .sampler import ShardedEpochs, cpu_generator
from .stages import AUGMENT, LOADER_WAIT, StageMarks


class TensorLoader(ShardedEpochs, StageMarks):
    """Loader over an ImageDataset kept on `device` as one uint8 (N, S, S, 3) tensor.

    View v of global batch b in epoch e is augmented with parameters drawn for the whole global
    batch from a generator seeded by (seed, e, b, v); each rank applies its slice. So an image's
    augmentation is the same whatever the world size or resume point. View v comes out at its own
    side (augment.crops' group size; data.image_size without multi-crop), cropped from the stored
    image_size images.
    """

    def __init__(self, dataset: ImageDataset, loader_cfg: LoaderConfig, augment_cfg: AugmentConfig,
                 image_size: int, device: torch.device | str, seed: int, rank: int = 0, world: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 out_dtype: torch.dtype = torch.float32):
        super().__init__(len(dataset), loader_cfg.batch_size, seed, rank, world)
        self.device = torch.device(device)
        self.images = torch.from_numpy(dataset.to_array(image_size)).to(self.device)
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.int64).to(self.device)
        self.image_size, self.sizes = image_size, view_sizes(augment_cfg, loader_cfg.views, image_size)
        self.augment_cfg, self.mean, self.std, self.out_dtype = augment_cfg, tuple(mean), tuple(std), out_dtype

    def batch(self, epoch: int, batch: int) -> Batch:
        """Batch `batch` of epoch `epoch` for this rank: a pure function of its arguments and the seed."""
        index = self.sampler.indices(epoch, batch).to(self.device, non_blocking=True)
        images = self.images[index]
        self.mark(LOADER_WAIT, AUGMENT)
        rows = self.sampler.rank_slice()
        views = []
        for view, size in enumerate(self.sizes):
            generator = cpu_generator("tensor-view", self.sampler.seed, epoch, batch, view)
            params = sample_params(self.sampler.global_batch, self.image_size, self.image_size,
                                   self.augment_cfg, generator, view)[rows]
            views.append(apply_params(images, params, size, self.mean, self.std, self.out_dtype,
                                      self.augment_cfg.impl))
        self.mark(AUGMENT)
        return Batch(views, self.labels[index], index)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.cursor.epoch, self.cursor.batch
        for b in range(start, len(self)):
            out = self.batch(epoch, b)
            self.cursor.advance()
            yield out
