"""Build a run's loaders from its config: the training Loader and the unaugmented eval batches."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from .batch import Loader
from .datasets.base import DataError, ImageDataset
from .settings import BACKENDS, LoadSettings
from .tensor_backend import TensorLoader
from .torchvision_backend import TorchvisionLoader, to_device
from .torchvision_backend import eval_transform as pil_eval_transform


def _ffcv_loader(*args, **kwargs) -> Loader:
    from .ffcv_backend import FfcvLoader  # imported on use: ffcv is an optional extra

    return FfcvLoader(*args, **kwargs)


def _dali_loader(*args, **kwargs) -> Loader:
    from .dali_backend import DaliLoader  # imported on use: DALI is an optional extra

    return DaliLoader(*args, **kwargs)


TRAIN_BACKENDS = {"tensor": TensorLoader, "torchvision": TorchvisionLoader, "ffcv": _ffcv_loader,
                  "dali": _dali_loader}


def _backend(settings: LoadSettings) -> str:
    if settings.loader.backend not in TRAIN_BACKENDS:
        raise ValueError(f"loader.backend={settings.loader.backend!r}: must be one of {', '.join(BACKENDS)}")
    return settings.loader.backend


def build_train_loader(settings: LoadSettings, dataset: ImageDataset, device: torch.device | str, rank: int = 0,
                       world: int = 1, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, out_dtype: torch.dtype = torch.float32) -> Loader:
    """The training Loader of settings.loader.backend, views in out_dtype; mean/std default to ImageNet's."""
    return TRAIN_BACKENDS[_backend(settings)](
        dataset, settings.loader, settings.augment, settings.data.image_size, device, settings.seed, rank, world,
        mean=IMAGENET_MEAN if mean is None else mean, std=IMAGENET_STD if std is None else std,
        out_dtype=out_dtype)


class TensorEvalBatches:
    """(images, labels) over the whole split, in order: the uint8 split on the device, normalised per batch."""

    def __init__(self, dataset: ImageDataset, image_size: int, device: torch.device | str, batch_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.images = torch.from_numpy(dataset.to_array(image_size)).to(device)
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.int64).to(device)
        self.image_size, self.batch_size, self.mean, self.std = image_size, batch_size, mean, std

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield eval_transform(self.images[rows], self.image_size, self.mean, self.std), self.labels[rows]


class _EvalImages(Dataset):
    """Item i -> (image, label); a file that cannot be decoded comes back as its DataError, raised in the
    main process (a worker's exception would become a multi-line traceback)."""

    def __init__(self, dataset: ImageDataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | DataError:
        try:
            image, index = self.dataset.load_usable(index)
        except DataError as e:
            return e
        return self.transform(image), int(self.dataset.labels[index])


def _collate_eval(items: list[tuple[torch.Tensor, int] | DataError]) -> tuple[torch.Tensor, torch.Tensor] | DataError:
    failed = next((item for item in items if isinstance(item, DataError)), None)
    return failed if failed is not None else default_collate(items)


class TorchvisionEvalBatches:
    """(images, labels) over the whole split, in order: PIL + torchvision eval transforms in workers."""

    def __init__(self, dataset: ImageDataset, image_size: int, device: torch.device | str, batch_size: int,
                 workers: int, pin_memory: bool, mean: Sequence[float], std: Sequence[float]):
        self.device = torch.device(device)
        self._loader = DataLoader(_EvalImages(dataset, pil_eval_transform(image_size, mean, std)),
                                  batch_size=batch_size, num_workers=workers, collate_fn=_collate_eval,
                                  pin_memory=pin_memory and self.device.type == "cuda",
                                  persistent_workers=workers > 0,
                                  generator=torch.Generator())   # keep the global RNG untouched

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self._loader:
            if isinstance(batch, DataError):
                raise batch
            images, labels = batch
            yield to_device(images, self.device), to_device(labels, self.device)


def build_eval_batches(settings: LoadSettings, dataset: ImageDataset, device: torch.device | str, batch_size: int = 512,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                       ) -> TensorEvalBatches | TorchvisionEvalBatches:
    """Re-iterable (images float32 normalised channels_last on device, labels) over all of `dataset`,
    without augmentation and without dropping a remainder, for the kNN monitor."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    mean = IMAGENET_MEAN if mean is None else tuple(mean)
    std = IMAGENET_STD if std is None else tuple(std)
    if _backend(settings) == "tensor":
        return TensorEvalBatches(dataset, settings.data.image_size, device, batch_size, mean, std)
    return TorchvisionEvalBatches(dataset, settings.data.image_size, device, batch_size, settings.loader.workers,
                                  settings.loader.pin_memory, mean, std)
