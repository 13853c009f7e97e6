"""`fastssl data convert`: any dataset the project reads, written as an FFCV `.beton` for the `ffcv` backend.

Bad data is settled here, once, so the loader never meets it: an ImageFolder or `images` source under
`on_error="skip"` is checked (every file decoded) before writing, which fixes the index -> label mapping;
under `"raise"` the first bad file stops the conversion with its path. FFCV's writer decodes in worker
processes and waits for a sample count, so an exception in a worker would hang it: samples never
raise there, a failure only sets a flag, and a flagged conversion is deleted and reported. The file is
written as `DST.tmp` and renamed at the end (loaders/atomic.py), so an interrupted run never leaves a `.beton` behind.

`raw` stores uint8 RGB (decoding is a memcpy: the choice for CIFAR-scale images); otherwise JPEG.
FFCV's writer cannot store a sample larger than its page (8 MiB by default; a worker fails and the
writer hangs), and a raw 4000x3000 photo is 36 MB, so raw files get pages that fit their largest image.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .datasets import ImageFolderDataset, ImagesDataset, load_cifar, load_fashion_mnist
from .datasets.base import DataError, ImageDataset

IMAGE, LABEL = "image", "label"          # the .beton's field names, read back by the ffcv backend
FILE_SOURCES = {"imagefolder": ImageFolderDataset, "images": ImagesDataset}   # read through their index
SOURCES = (*FILE_SOURCES, "cifar10", "cifar100", "fashion-mnist")
SPLITS = ("train", "test")
DEFAULT_JPEG_QUALITY = 90
PAGE_SIZE = 1 << 23                      # FFCV's default page, 8 MiB: ample for a JPEG sample


def parse_source(text: str) -> tuple[str, Path]:
    """`KIND:PATH` -> (kind, path); fashion_mnist is accepted for fashion-mnist."""
    kind, sep, path = text.partition(":")
    kind = kind.strip().replace("_", "-")
    if not sep or kind not in SOURCES or not path:
        raise DataError(f"--src {text!r}: must be KIND:PATH with KIND one of {', '.join(SOURCES)}")
    return kind, Path(path)


def load_source(kind: str, path: Path, split: str = "train", on_error: str = "raise") -> ImageDataset:
    """The dataset to convert. imagefolder: PATH holds the class folders; images: PATH is a folder read at
    any depth or a .txt list of image paths, written with label 0 (split is not used by either)."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: must be one of {', '.join(SPLITS)}")
    if kind in FILE_SOURCES:
        dataset = FILE_SOURCES[kind](path, on_error=on_error)
        if on_error == "skip":
            dataset.check()      # drop bad files now: the writer cannot drop an index
        return dataset
    if kind == "fashion-mnist":
        return load_fashion_mnist(path, split)
    return load_cifar(path, kind, split)


class _Samples:
    """(HWC uint8 RGB array, label) per index for FFCV's writer; a failure sets failed[i], never raises."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset
        self.failed = multiprocessing.RawArray(ctypes.c_bool, len(dataset))   # shared with forked workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            return np.asarray(self.dataset.load_pil(index)), int(self.dataset.labels[index])
        except Exception:  # noqa: BLE001 (any exception in a writer process would hang the writer)
            self.failed[index] = True
            return np.zeros((1, 1, 3), np.uint8), -1


def _page_size(dataset: ImageDataset, raw: bool, max_res: int | None) -> int:
    """A page that holds the largest sample: in raw mode 3 bytes per pixel of the largest image (as
    --max-res leaves it), rounded up to a power of two; otherwise FFCV's default. ImageFolder sizes come
    from the index's header reads."""
    if not raw:
        return PAGE_SIZE
    if hasattr(dataset, "images"):
        pixels = int(np.prod(dataset.images.shape[1:3]))
    else:
        pixels = int(np.prod(dataset.sizes, axis=1).max())
    if max_res is not None:
        pixels = min(pixels, max_res * max_res)
    return max(PAGE_SIZE, 1 << (3 * pixels - 1).bit_length())


@dataclass
class ConvertResult:
    path: Path
    images: int
    skipped: list[tuple[Path, str]]      # files dropped under on_error="skip" (ImageFolder, images only)


def convert(dataset: ImageDataset, dst: str | os.PathLike, raw: bool = False,
            jpeg_quality: int = DEFAULT_JPEG_QUALITY, max_res: int | None = None,
            workers: int | None = None) -> ConvertResult:
    """Write `dataset` to `dst` in index order (sample i of the file is image i), with a progress bar."""
    from .ffcv_imports import DatasetWriter, IntField, RGBImageField

    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality {jpeg_quality}: must be in [1, 100]")
    if max_res is not None and max_res < 1:
        raise DataError(f"--max-res {max_res}: must be >= 1")
    if len(dataset) == 0:
        raise DataError("nothing to convert: the dataset holds no images")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    samples = _Samples(dataset)
    fields = {IMAGE: RGBImageField(write_mode="raw" if raw else "jpg", max_resolution=max_res,
                                   jpeg_quality=jpeg_quality), LABEL: IntField()}
    with atomic_path(dst) as part:
        DatasetWriter(str(part), fields, page_size=_page_size(dataset, raw, max_res),
                      num_workers=workers or os.cpu_count() or 1).from_indexed_dataset(samples)
        failed = np.flatnonzero(np.frombuffer(samples.failed, dtype=np.bool_))
        if len(failed):
            dataset.load_pil(int(failed[0]))   # raises a DataError naming the file, where it still fails
            raise DataError(f"image {failed[0]} failed to load during conversion ({len(failed)} in all); "
                            f"nothing was written")
    return ConvertResult(dst, len(dataset), list(getattr(dataset, "skipped", [])))
