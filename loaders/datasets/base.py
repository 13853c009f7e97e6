"""The one dataset contract every backend reads: labelled RGB images, in memory or on disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image


class DataError(ValueError):
    """Bad input data: the message names the file or folder and the rule it broke."""


class ImageDataset(Protocol):
    """What backends need from a dataset split.

    `labels` is int64 (N,); `classes` names each label. `load_pil(i)` returns image i as an RGB PIL
    image (grayscale, CMYK, RGBA, palette converted). `load_usable(i)` returns (image, index): image
    i, or where the dataset's bad-file policy says so another one in its place, for loaders that cannot
    drop an index mid-epoch. `to_array(size)` returns every image as one uint8 (N, size, size, 3)
    array, for backends that keep the whole split on the device.
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

    def to_array(self, size: int) -> np.ndarray:
        if self.images.shape[1:3] == (size, size):
            return self.images
        return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                         for im in self.images])
