"""Fashion-MNIST from its original IDX files (gzipped or raw), as 3-channel images.

The encoders take RGB input, so the grey channel is repeated three times; that costs 3x the memory of
the grey array (141 MB for the training split), which keeps every backend on one code path.
"""
from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np

from ..settings import FASHION_MNIST_DEFAULT

from .base import ArrayDataset, DataError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PREFIX = {"train": "train", "test": "t10k"}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {str(root / stem)!r} (or .gz): does not exist; "
                    f"data.path must hold the four IDX files")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes as an array of its declared shape; header and size are checked."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream, truncated gzip, unreadable file
        raise DataError(f"IDX file {str(path)!r}: cannot be read ({e})") from e
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"IDX file {str(path)!r}: magic number must be {magic:#010x}, is {found:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r}: is {len(raw)} bytes, shorter than its {header}-byte header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(f"IDX file {str(path)!r}: must be {expected} bytes (header {header} + "
                        f"{' x '.join(map(str, dims))}), is {len(raw)} (truncated or not this file)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DEFAULT, split: str = "train") -> ArrayDataset:
    """A Fashion-MNIST split as uint8 (N, 28, 28, 3) with the 10 class names."""
    if split not in PREFIX:
        raise ValueError(f"split={split!r}: must be one of {', '.join(PREFIX)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder {str(root)!r}: does not exist")
    images_path = _find(root, f"{PREFIX[split]}-images-idx3-ubyte")
    labels_path = _find(root, f"{PREFIX[split]}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {str(images_path)!r} holds {len(images)} images but "
                        f"{str(labels_path)!r} holds {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(f"IDX file {str(labels_path)!r}: labels must be < {len(CLASSES)}, found {labels.max()}")
    return ArrayDataset(np.repeat(images[..., None], 3, axis=-1), labels, list(CLASSES))
