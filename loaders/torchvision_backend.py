"""The `torchvision` backend: DataLoader workers, PIL images, torchvision.transforms.v2 per image.

The baseline most SSL code uses, and the CPU fallback. torchvision transforms draw from the global
torch RNG, so each (epoch, image, view) reseeds it from a derived seed inside a forked RNG state:
the result depends neither on the worker count nor on the resume point, and the caller's own RNG
stream is left untouched when workers=0. Each view has its own transform, so per-view probabilities
(BYOL's blur and solarize) and multi-crop's per-view sizes and crop scales apply; views are cast to
the loader's dtype in the workers.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .settings import AugmentConfig, LoaderConfig

from .augment import IMAGENET_MEAN, IMAGENET_STD, blur_window
from .batch import Batch
from .datasets.base import DataError, ImageDataset
from .sampler import EpochCursor, ShardedEpochs, ShardedSampler, derive_seed
from .stages import H2D_COPY, LOADER_WAIT, StageMarks


def train_transform(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float], view: int = 0,
                    out_dtype: torch.dtype = torch.float32) -> v2.Compose:
    """View `view` of the SimCLR/BYOL per-image recipe on a PIL image -> out_dtype (3, S, S) normalised, S
    and the crop scale the view's (augment.view_crop: its crop group's under multi-crop, else image_size).

    Blur and solarize act on float [0, 1] images after grayscale, as augment's pipeline orders them; the
    blur window is sized by the view's own side.
    """
    size, scale = cfg.view_crop(view, image_size)
    blur = v2.GaussianBlur(blur_window(size, cfg.blur_kernel_frac), (cfg.blur_sigma_min, cfg.blur_sigma_max))
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.grayscale_p),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([blur], p=cfg.for_view("blur_p", view)),
        v2.RandomSolarize(cfg.solarize_threshold, p=cfg.for_view("solarize_p", view)),
        v2.Normalize(mean, std),
        v2.ToDtype(out_dtype),
    ])


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize a PIL image to size x size and normalise, no randomness."""
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class _Views(Dataset):
    """Item (seed, epoch, i) -> (V views (3,S_v,S_v), label, i), view v by transforms[v] from its own derived seed.

    Seed and epoch travel with the index (the batch sampler emits triples), so persistent workers
    hold no state that set_epoch or load_state_dict would have to reach. Under data.on_error=skip a file
    that cannot be decoded is replaced by the next good one (`load_usable`; the item carries that one's
    label and index); under raise it comes back as its DataError, raised by the loader in the main
    process: raised in a worker, the DataLoader would re-raise it as a multi-line traceback in place of
    its one-line message.
    """

    def __init__(self, dataset: ImageDataset, transforms: list[v2.Compose]):
        self.dataset, self.transforms = dataset, transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[list[torch.Tensor], int, int] | DataError:
        seed, epoch, index = key
        try:
            image, index = self.dataset.load_usable(index)
        except DataError as e:
            return e
        views = []
        with torch.random.fork_rng(devices=[]):
            for view, transform in enumerate(self.transforms):
                # Seed only the CPU generator: torch.manual_seed would also reseed CUDA's.
                torch.default_generator.manual_seed(derive_seed("torchvision-view", seed, epoch, index, view))
                views.append(transform(image))
        return views, int(self.dataset.labels[index]), index


class _EpochBatches:
    """Batch sampler: this rank's (seed, epoch, i) keys from the cursor's position to the epoch's end.

    The position is read at each iter(DataLoader), so it follows set_epoch/load_state_dict.
    """

    def __init__(self, sampler: ShardedSampler, cursor: EpochCursor):
        self.sampler, self.cursor = sampler, cursor

    def __len__(self) -> int:
        return self.sampler.num_batches - self.cursor.batch

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return self._keys(self.sampler.seed, self.cursor.epoch, self.cursor.batch)

    def _keys(self, seed: int, epoch: int, start: int) -> Iterator[list[tuple[int, int, int]]]:
        for b in range(start, self.sampler.num_batches):
            yield [(seed, epoch, i) for i in self.sampler.indices(epoch, b).tolist()]


def _collate_views(items: list[tuple[list[torch.Tensor], int, int] | DataError]
                   ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | DataError:
    """Stack view v of every image into one channels_last (B,3,S_v,S_v) batch per view (views of several
    sizes cannot share a tensor; laid out in the worker, so the device copy needs no conversion); a batch
    with an undecodable file is that file's DataError."""
    failed = next((item for item in items if isinstance(item, DataError)), None)
    if failed is not None:
        return failed
    views = [_stack_channels_last([image_views[v] for image_views, _, _ in items]) for v in range(len(items[0][0]))]
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
    index = torch.tensor([i for _, _, i in items], dtype=torch.int64)
    return views, labels, index


def _stack_channels_last(images: list[torch.Tensor]) -> torch.Tensor:
    """(3,S,S) images -> one (B,3,S,S) channels_last batch, written in place (one copy)."""
    channels, height, width = images[0].shape
    out = torch.empty((len(images), height, width, channels), dtype=images[0].dtype)
    torch.stack([image.permute(1, 2, 0) for image in images], out=out)
    return out.permute(0, 3, 1, 2)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Asynchronous copy (from pinned memory) to `device`, channels_last for images."""
    layout = torch.channels_last if tensor.ndim == 4 else torch.preserve_format
    return tensor.to(device, non_blocking=True, memory_format=layout)


class TorchvisionLoader(ShardedEpochs, StageMarks):
    """Loader: DataLoader + PIL + torchvision transforms, sharded and resumable like every backend."""

    def __init__(self, dataset: ImageDataset, loader_cfg: LoaderConfig, augment_cfg: AugmentConfig,
                 image_size: int, device: torch.device | str, seed: int, rank: int = 0, world: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 out_dtype: torch.dtype = torch.float32):
        super().__init__(len(dataset), loader_cfg.batch_size, seed, rank, world)
        self.device = torch.device(device)
        views = _Views(dataset, [train_transform(augment_cfg, image_size, mean, std, v, out_dtype)
                                 for v in range(loader_cfg.views)])
        self._loader = DataLoader(
            views, batch_sampler=_EpochBatches(self.sampler, self.cursor),
            num_workers=loader_cfg.workers, collate_fn=_collate_views,
            pin_memory=loader_cfg.pin_memory and self.device.type == "cuda",
            persistent_workers=loader_cfg.workers > 0,
            # Its own generator for the workers' base seed: DataLoader would draw it from the global
            # RNG, moving the training process's stream (the views reseed per image anyway).
            generator=torch.Generator())

    def __iter__(self) -> Iterator[Batch]:
        for batch in self._loader:
            if isinstance(batch, DataError):
                raise batch
            views, labels, index = batch
            self.cursor.advance()
            self.mark(LOADER_WAIT, H2D_COPY)
            out = Batch([to_device(v, self.device) for v in views], to_device(labels, self.device),
                        to_device(index, self.device))
            self.mark(H2D_COPY)
            yield out
