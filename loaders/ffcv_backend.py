"""The `ffcv` backend: a `.beton` written by `fastssl data convert`, decoded and cropped by a numba kernel.

Why not FFCV's own Loader (one `PipelineSpec(source="image", ...)` per view): its random-resized-crop
draws from numba's per-thread `np.random` inside a parallel loop, which no seed reaches, and its
traversal order runs ahead in a thread; neither gives the project's contract (every random choice a
pure function of (seed, epoch, batch), exact resume, world-size independent shards). So this reads
the file with FFCV's `Reader` (metadata) and a memory map (data), and runs one JIT-compiled parallel
loop per view with FFCV's own C routines: JPEG decode (libjpeg-turbo) or, for `--raw` files, the
pixels in place, then crop + resize (OpenCV, INTER_AREA). The crop boxes come from `sample_crop_boxes`
with the same derived generators as every backend; flip, colour jitter, grayscale, blur, solarize and
normalisation run batched on the training device through `augment.apply_colour` (the fused augment
kernel on a GPU). The next batch
is decoded in a background thread (the kernel releases the GIL) while the current one trains.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numba
import numpy as np
import torch
from .settings import AugmentConfig, LoaderConfig

from .augment import IMAGENET_MEAN, IMAGENET_STD, apply_colour, sample_crop_boxes, sample_params, view_sizes
from .batch import Batch
from .convert import IMAGE, LABEL
from .datasets.base import DataError, ImageDataset
from .ffcv_imports import Reader, imdecode, resize_crop
from .sampler import ShardedEpochs, cpu_generator
from .stages import AUGMENT, H2D_COPY, LOADER_WAIT, StageMarks

JPEG_MODE = 0                            # RGBImageField's metadata 'mode': 0 JPEG, 1 raw
_imdecode = numba.njit(nogil=True)(imdecode)
_resize_crop = numba.njit(nogil=True)(resize_crop)
# One decode thread for the process: calls into the parallel kernel never overlap, whatever numba's
# threading layer (workqueue aborts on concurrent use).
_DECODER = ThreadPoolExecutor(1, thread_name_prefix="ffcv-decode")


@numba.njit(parallel=True, nogil=True)
def decode_crop(file, ptr, size, mode, height, width, index, boxes, out):
    """out[k] = image index[k] cropped to boxes[k] (x0, y0, w, h) and resized to out's (S, S, 3)."""
    for k in numba.prange(len(index)):
        i = index[k]
        h, w = np.uint32(height[i]), np.uint32(width[i])
        data = file[ptr[i]:ptr[i] + size[i]]
        if mode[i] == JPEG_MODE:
            pixels = np.empty((h, w, 3), np.uint8)
            _imdecode(data, pixels, h, w, h, w, 0, 0, 1, 1, False, False)
        else:
            pixels = data.reshape(h, w, 3)
        x0, y0, bw, bh = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        _resize_crop(pixels, y0, y0 + bh, x0, x0 + bw, out[k])
    return out


class BetonFile:
    """A .beton's images (FFCV RGBImageField) and labels, memory-mapped; sample i is dataset image i."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"loader.beton {str(self.path)!r}: does not exist (write it with `fastssl data "
                            f"convert --src KIND:PATH --dst {self.path}`)")
        try:
            reader = Reader(str(self.path))
        except Exception as e:  # noqa: BLE001 (a foreign or damaged file fails in many ways)
            raise DataError(f"loader.beton {str(self.path)!r}: not a readable .beton ({e})") from e
        if reader.field_names[:2] != [IMAGE, LABEL]:
            raise DataError(f"loader.beton {str(self.path)!r}: fields {reader.field_names}, expected "
                            f"{[IMAGE, LABEL]} as `fastssl data convert` writes them")
        image = reader.metadata[f"f{reader.field_names.index(IMAGE)}"]
        self.labels = np.ascontiguousarray(reader.metadata[f"f{reader.field_names.index(LABEL)}"], np.int64)
        self.mode = np.ascontiguousarray(image["mode"])
        self.height = np.ascontiguousarray(image["height"], np.int64)
        self.width = np.ascontiguousarray(image["width"], np.int64)
        self.ptr = np.ascontiguousarray(image["data_ptr"], np.int64)
        # Each sample's byte count, from the allocation table (sorted by address).
        table = np.sort(reader.alloc_table, order="ptr")
        self.size = table["size"][np.searchsorted(table["ptr"], image["data_ptr"])].astype(np.int64)
        self.file = np.memmap(self.path, np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.labels)

    def crop_boxes(self, index: np.ndarray, scale: tuple[float, float], generator: torch.Generator) -> np.ndarray:
        """(n, 4) int64 random-resized-crop boxes for images `index`, drawn per image size in sorted order."""
        shapes = self.height[index] * 65536 + self.width[index]
        boxes = np.empty((len(index), 4), np.int64)
        for shape in np.unique(shapes):
            rows = np.flatnonzero(shapes == shape)
            boxes[rows] = sample_crop_boxes(len(rows), int(shape // 65536), int(shape % 65536), scale,
                                            generator).numpy()
        return boxes

    def decode(self, index: np.ndarray, boxes: np.ndarray, size: int, threads: int) -> torch.Tensor:
        """Images `index` cropped to `boxes`, resized: uint8 (n, size, size, 3)."""
        numba.set_num_threads(min(max(1, threads), numba.config.NUMBA_NUM_THREADS))
        out = np.empty((len(index), size, size, 3), np.uint8)
        decode_crop(self.file, self.ptr, self.size, self.mode, self.height, self.width, index, boxes, out)
        return torch.from_numpy(out)


class FfcvLoader(ShardedEpochs, StageMarks):
    """Loader over `loader_cfg.beton`; `dataset` (the same data, e.g. for kNN) must match its labels.

    View v of global batch b in epoch e draws colour/flip for the whole global batch, then crop boxes,
    from a generator seeded by (seed, e, b, v); each rank decodes its slice, each view at its own side
    and crop scale (augment.view_crop). loader.workers is the decode threads.
    """

    def __init__(self, dataset: ImageDataset, loader_cfg: LoaderConfig, augment_cfg: AugmentConfig,
                 image_size: int, device: torch.device | str, seed: int, rank: int = 0, world: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 out_dtype: torch.dtype = torch.float32):
        if not loader_cfg.beton:
            raise DataError("loader.backend=ffcv needs loader.beton, the file `fastssl data convert` writes")
        self.file = BetonFile(loader_cfg.beton)
        if not np.array_equal(self.file.labels, dataset.labels):
            raise DataError(f"loader.beton {loader_cfg.beton!r}: its {len(self.file)} labels differ from the "
                            f"configured dataset's {len(dataset)}: converted from other data (or with another "
                            f"data.on_error)")
        super().__init__(len(self.file), loader_cfg.batch_size, seed, rank, world)
        self.device = torch.device(device)
        self.labels = torch.from_numpy(self.file.labels)
        self.image_size, self.threads = image_size, loader_cfg.workers
        self.sizes = view_sizes(augment_cfg, loader_cfg.views, image_size)
        self.pin = loader_cfg.pin_memory and self.device.type == "cuda"
        self.augment_cfg, self.mean, self.std, self.out_dtype = augment_cfg, tuple(mean), tuple(std), out_dtype

    def _draw(self, epoch: int, batch: int) -> tuple[torch.Tensor, list]:
        """This rank's indices and, per view, (crop boxes, colour params): all the batch's randomness."""
        index = self.sampler.global_indices(epoch, batch)
        rows, side = self.sampler.rank_slice(), self.image_size
        draws = []
        for view in range(len(self.sizes)):
            generator = cpu_generator("ffcv-view", self.sampler.seed, epoch, batch, view)
            colour = sample_params(len(index), side, side, self.augment_cfg, generator, view)
            scale = self.augment_cfg.view_crop(view, side)[1]
            boxes = self.file.crop_boxes(index.numpy(), scale, generator)
            draws.append((boxes[rows], colour[rows]))
        return index[rows], draws

    def _decode(self, epoch: int, batch: int) -> tuple[torch.Tensor, list]:
        """Host part of batch `batch` (runs in the decode thread): indices, uint8 crops at each view's side,
        colour params."""
        index, draws = self._draw(epoch, batch)
        crops = [self.file.decode(index.numpy(), boxes, size, self.threads)
                 for (boxes, _), size in zip(draws, self.sizes)]
        if self.pin:
            crops = [c.pin_memory() for c in crops]
        return index, [(crop, params) for crop, (_, params) in zip(crops, draws)]

    def _finish(self, index: torch.Tensor, crops: list) -> Batch:
        """Device part: flip and colour on the training device, normalised channels_last views."""
        self.mark(LOADER_WAIT, H2D_COPY)
        copies = [(crop.to(self.device, non_blocking=True), params) for crop, params in crops]
        labels, index = (t.to(self.device, non_blocking=True) for t in (self.labels[index], index))
        self.mark(H2D_COPY, AUGMENT)
        views = [apply_colour(crop, params, self.mean, self.std, out_dtype=self.out_dtype,
                              impl=self.augment_cfg.impl) for crop, params in copies]
        self.mark(AUGMENT)
        return Batch(views, labels, index)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.cursor.epoch, self.cursor.batch
        pending = _DECODER.submit(self._decode, epoch, start) if start < len(self) else None
        for b in range(start, len(self)):
            decoded = pending.result()
            pending = _DECODER.submit(self._decode, epoch, b + 1) if b + 1 < len(self) else None
            out = self._finish(*decoded)
            self.cursor.advance()
            yield out
