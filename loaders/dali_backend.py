"""The `dali` backend: NVIDIA DALI decodes and augments; nvJPEG on a GPU, CPU operators without one.

Deviation from DESIGN.md: no `fn.readers.file`. Its shuffle and shard come from its own RNG and
its random operators draw from per-operator streams that advance with every sample since the
pipeline was built, so neither the order nor the augmentation of batch b could be reproduced on
resume, nor matched across world sizes. Instead one `external_source` feeds, per batch, what the
shared contract (`sampler.ShardedSampler`, `sampler.cpu_generator`) decides on the host: this
rank's encoded files (read as bytes), their dataset indices, and every view's crop box, flip and
colour factors. DALI then decodes (`decoders.image`, device "mixed" on a GPU), crops and resizes
(`resize` with a per-sample ROI), jitters (`color_twist`; saturation 0 is the grayscale) and
normalises and flips (`crop_mirror_normalize`, HWC float32: channels_last once viewed as NCHW).
The index rides through the pipeline with its image, so a batch can never be paired with the
wrong labels. Colour operations run in DALI's fixed order, not torchvision's random one.

DALI stops the pipeline on a file it cannot decode, so every file is decoded once at start-up
(`check.usable`): data.on_error=raise names the bad files and points to `fastssl data check`,
skip leaves them out of the sampled set. That check also gives the image sizes the crop boxes need.
In-memory datasets (CIFAR pickles, shapes) are fed as pixels and skip the decoder.
"""
from __future__ import annotations

import os
import weakref
from typing import Iterator, Sequence

import numpy as np
import torch

from fastssl.config import AugmentConfig, LoaderConfig

from . import check
from .augment import IMAGENET_MEAN, IMAGENET_STD, sample_params
from .batch import Batch
from .datasets.base import DataError, ImageDataset
from .sampler import ShardedEpochs, ShardedSampler, cpu_generator

try:
    from nvidia.dali import Pipeline, fn, types
    from nvidia.dali.plugin.pytorch import feed_ndarray
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError(f"loader.backend=dali needs NVIDIA DALI: pip install -e '.[dali]' ({e})") from e

# A forked child (a DataLoader worker) must never run DALI's destructor: it waits for pipeline threads
# that exist only in the parent, so a pipeline its garbage collector finds would hang it. The child
# takes a strong reference to every pipeline alive or pending collection at the fork, and exits
# without finalising them.
_PIPELINES: weakref.WeakSet = weakref.WeakSet()
_KEPT_IN_CHILD: list = []
os.register_at_fork(after_in_child=lambda: _KEPT_IN_CHILD.extend(_PIPELINES))

# Per view: roi_start, roi_end, mirror, brightness, contrast, saturation, hue.
PARAM_TYPES = [types.FLOAT, types.FLOAT, types.INT32, types.FLOAT, types.FLOAT, types.FLOAT, types.FLOAT]
PARAM_NDIM = [1, 1, 0, 0, 0, 0, 0]
PARAMS = len(PARAM_TYPES)


def _sources(dataset: ImageDataset) -> tuple[np.ndarray, np.ndarray, bool]:
    """(dataset indices the sampler draws from, their (H, W) sizes, whether they are encoded files)."""
    if hasattr(dataset, "paths"):
        keep, decoded = check.usable(dataset.paths, dataset.on_error, dataset.root, "dali")
        return keep, decoded.sizes[keep], True
    if hasattr(dataset, "images"):
        n, height, width = dataset.images.shape[:3]
        return np.arange(n), np.tile([height, width], (n, 1)), False
    raise DataError(f"loader.backend=dali reads image files or in-memory arrays, not {type(dataset).__name__}")


class _Feeder:
    """What batch (epoch, b) is made of, computed on the host: the pipeline's source.

    Kept apart from the loader so that the pipeline, whose source this is, does not reference the
    loader: without that cycle a dropped loader frees its pipeline and threads at once.
    """

    def __init__(self, dataset: ImageDataset, sampler: ShardedSampler, positions: np.ndarray, sizes: np.ndarray,
                 encoded: bool, augment_cfg: AugmentConfig, views: int):
        self.dataset, self.sampler, self.positions, self.sizes = dataset, sampler, positions, sizes
        self.encoded, self.augment_cfg, self.views = encoded, augment_cfg, views

    def view_params(self, epoch: int, batch: int, view: int, rows: np.ndarray) -> list[np.ndarray]:
        """One view's DALI arguments for this rank, drawn for the whole global batch (world-invariant).

        Images of one size share a sample_params call; with mixed sizes, one call per size in order.
        """
        generator = cpu_generator("dali-view", self.sampler.seed, epoch, batch, view)
        sizes = self.sizes[rows]
        boxes = np.zeros((len(rows), 4), np.float32)
        flip, jitter, gray = (np.zeros(len(rows), bool) for _ in range(3))
        factors = np.zeros((len(rows), 4), np.float32)
        for height, width in np.unique(sizes, axis=0):
            group = np.flatnonzero((sizes == (height, width)).all(1))
            p = sample_params(len(group), int(height), int(width), self.augment_cfg, generator)
            boxes[group], flip[group], jitter[group] = p.boxes.numpy(), p.flip.numpy(), p.jitter.numpy()
            factors[group], gray[group] = p.factors.numpy(), p.gray.numpy()
        mine = self.sampler.rank_slice()
        boxes, flip, jitter, gray, factors = boxes[mine], flip[mine], jitter[mine], gray[mine], factors[mine]
        x0, y0, w, h = boxes.T
        ones = np.ones(len(boxes), np.float32)
        return [np.stack([y0, x0], 1), np.stack([y0 + h, x0 + w], 1), flip.astype(np.int32),
                np.where(jitter, factors[:, 0], ones), np.where(jitter, factors[:, 1], ones),
                np.where(jitter, factors[:, 2], ones) * ~gray, np.where(jitter, factors[:, 3] * 360, 0 * ones)]

    def inputs(self, epoch: int, batch: int) -> list:
        """Everything the pipeline needs for (epoch, batch): images, indices, then PARAMS per view."""
        rows = self.sampler.global_indices(epoch, batch).numpy()
        index = self.positions[rows[self.sampler.rank_slice()]]
        if self.encoded:
            images = [np.fromfile(self.dataset.paths[i], dtype=np.uint8) for i in index]
        else:
            images = [self.dataset.images[i] for i in index]
        out = [images, index.astype(np.int64)]
        for view in range(self.views):
            out += self.view_params(epoch, batch, view, rows)
        return out

    def batches(self, epoch: int, start: int) -> Iterator[list]:
        """Batches from (epoch, start) onwards, on into later epochs."""
        while True:
            for b in range(start, self.sampler.num_batches):
                yield self.inputs(epoch, b)
            epoch, start = epoch + 1, 0


class DaliLoader(ShardedEpochs):
    """Loader: one DALI pipeline fed batch by batch from the shared sampler, `loader.prefetch` deep.

    The pipeline runs ahead across epoch ends. When iteration resumes anywhere other than where it
    stands (load_state_dict, set_epoch to another epoch), it is rebuilt there, dropping what it held.
    """

    def __init__(self, dataset: ImageDataset, loader_cfg: LoaderConfig, augment_cfg: AugmentConfig,
                 image_size: int, device: torch.device | str, seed: int, rank: int = 0, world: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        positions, sizes, encoded = _sources(dataset)
        super().__init__(len(positions), loader_cfg.batch_size, seed, rank, world)
        self.feeder = _Feeder(dataset, self.sampler, positions, sizes, encoded, augment_cfg, loader_cfg.views)
        self.labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64)
        self.device = torch.device(device)
        self.cfg, self.image_size = loader_cfg, image_size
        self.mean, self.std = [255 * m for m in mean], [255 * s for s in std]
        self._pipe: Pipeline | None = None
        self._at: tuple[int, int, int] | None = None     # (seed, epoch, batch) the pipeline yields next

    # -- the pipeline ----------------------------------------------------------------------------
    def _build(self, epoch: int, start: int) -> Pipeline:
        """A pipeline fed from (epoch, start); it has no random operator, so its own seed is unused."""
        gpu = self.device.type == "cuda"
        device_id = None
        if gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        pipe = Pipeline(batch_size=self.sampler.rank_batch, num_threads=max(1, self.cfg.workers),
                        device_id=device_id, prefetch_queue_depth=self.cfg.prefetch)
        views = self.cfg.views
        with pipe:
            data, index, *params = fn.external_source(
                source=self.feeder.batches(epoch, start), num_outputs=2 + PARAMS * views, batch=True,
                dtype=[types.UINT8, types.INT64] + PARAM_TYPES * views,
                ndim=[1 if self.feeder.encoded else 3, 0] + PARAM_NDIM * views,
                layout=[None if self.feeder.encoded else "HWC"])
            if self.feeder.encoded:
                images = fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                           **({"hw_decoder_load": self.cfg.hw_decoder_load} if gpu else {}))
            else:
                images = data.gpu() if gpu else data
            outputs = []
            for v in range(views):
                start_, end, mirror, brightness, contrast, saturation, hue = params[PARAMS * v:PARAMS * (v + 1)]
                crop = fn.resize(images, size=[self.image_size] * 2, roi_start=start_, roi_end=end,
                                 antialias=True, interp_type=types.INTERP_LINEAR)
                crop = fn.color_twist(crop, brightness=brightness, contrast=contrast, saturation=saturation,
                                      hue=hue)
                outputs.append(fn.crop_mirror_normalize(crop, mirror=mirror, mean=self.mean, std=self.std,
                                                        output_layout="HWC", dtype=types.FLOAT))
            pipe.set_outputs(*outputs, index)
        pipe.build()
        _PIPELINES.add(pipe)
        return pipe

    def _to_torch(self, tensors) -> torch.Tensor:
        """A DALI batch of (S, S, 3) float32 as (B, 3, S, S) channels_last on the loader's device."""
        dense = tensors.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(dense, out, cuda_stream=stream)   # a copy: DALI reuses its output buffers
        return out.permute(0, 3, 1, 2)

    def __iter__(self) -> Iterator[Batch]:
        seed, epoch, start = self.sampler.seed, self.cursor.epoch, self.cursor.batch
        if self._at != (seed, epoch, start):
            self._pipe = None                  # frees the old pipeline's threads first
            self._pipe = self._build(epoch, start)
        for b in range(start, len(self)):
            *views, index = self._pipe.run()
            index = torch.from_numpy(np.array(index.as_array()))
            self._at = (seed, epoch, b + 1) if b + 1 < len(self) else (seed, epoch + 1, 0)
            self.cursor.advance()
            yield Batch([self._to_torch(v) for v in views], self.labels[index].to(self.device),
                        index.to(self.device))
