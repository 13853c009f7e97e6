"""The one dataset contract every backend reads: labelled RGB images, in memory or on disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from .fingerprint import Fingerprint, pixels_fingerprint


class DataError(ValueError):
    """Bad input data: the message names the file or folder and the rule it broke."""


class ImageDataset(Protocol):
    """What backends need from a dataset split.

    `labels` is int64 (N,); `classes` names each label. `load_pil(i)` returns image i as an RGB PIL
    image (grayscale, CMYK, RGBA, palette converted). `load_usable(i)` returns (image, index): image
    i, or where the dataset's bad-file policy says so another one in its place, for loaders that cannot
    drop an index mid-epoch. `to_array(size)` returns every image as one uint8 (N, size, size, 3)
    array, for backends that keep the whole split on the device. An unlabelled dataset (data.dataset=
    images) has labels all 0, no classes and `labelled = False`: readers that score labels ask
    `getattr(dataset, "labelled", True)`. `fingerprint()`, where a dataset has it, says what the split
    is in a few hundred bytes (fingerprint.py), so that a resumed run refuses other data.
    """

    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int: ...
    def load_pil(self, index: int) -> Image.Image: ...
    def load_usable(self, index: int) -> tuple[Image.Image, int]: ...
    def to_array(self, size: int) -> np.ndarray: ...


@dataclass
class ArrayDataset:
    """A split held in memory as uint8 (N, H, W, 3): CIFAR, Fashion-MNIST, the embedded shapes."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"ArrayDataset images: must be uint8 (N, H, W, 3), got "
                            f"{self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise DataError(f"ArrayDataset: {len(self.images)} images but {len(self.labels)} labels")
        self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def load_pil(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def load_usable(self, index: int) -> tuple[Image.Image, int]:
        return self.load_pil(index), index   # pixels in memory are always usable

    def fingerprint(self) -> Fingerprint:
        """The pixels and labels (fingerprint.py): what a resumed run must read again."""
        return pixels_fingerprint(self.images, self.labels, self.classes)

    def to_array(self, size: int) -> np.ndarray:
        if self.images.shape[1:3] == (size, size):
            return self.images
        return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                         for im in self.images])


class Shard:
    """Images rank, rank + world, rank + 2 world, ... of `dataset`: one rank's part of a split that every
    rank evaluates together (the kNN monitor under torchrun). Implements the ImageDataset protocol."""

    def __init__(self, dataset: ImageDataset, rank: int, world: int):
        if not 0 <= rank < world:
            raise ValueError(f"shard {rank} of {world}: need 0 <= rank < world")
        self.dataset, self.rank, self.world = dataset, rank, world
        self.labels = np.asarray(dataset.labels)[rank::world]
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.labels)

    def load_pil(self, index: int) -> Image.Image:
        return self.dataset.load_pil(self.rank + self.world * index)

    def load_usable(self, index: int) -> tuple[Image.Image, int]:
        """Image `index` of the shard, or the shard's next one the dataset serves as itself (a substitute
        from another shard would carry a label this shard does not know)."""
        for step in range(len(self)):
            at = (index + step) % len(self)
            image, served = self.dataset.load_usable(self.rank + self.world * at)
            if served == self.rank + self.world * at:
                return image, at
        raise DataError(f"shard {self.rank} of {self.world}: no image of it can be decoded")

    def to_array(self, size: int) -> np.ndarray:
        return self.dataset.to_array(size)[self.rank::self.world]
