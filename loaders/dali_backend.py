"""The `dali` backend: NVIDIA DALI decodes and augments; nvJPEG on a GPU, CPU operators without one.

Why not `fn.readers.file`: Its shuffle and shard come from its own RNG and
its random operators draw from per-operator streams that advance with every sample since the
pipeline was built, so neither the order nor the augmentation of batch b could be reproduced on
resume, nor matched across world sizes. Instead one `external_source` feeds, per batch, what the
shared contract (`sampler.ShardedSampler`, `sampler.cpu_generator`) decides on the host: this
rank's encoded files (read as bytes), their dataset indices, and every view's crop box, flip,
colour factors, blur sigma and solarize flag. DALI then decodes (`decoders.image`, device "mixed" on
a GPU), crops and resizes (`resize` with a per-sample ROI, to each view's own side under multi-crop),
jitters (`color_twist`; saturation 0 is the grayscale), blurs (`gaussian_blur`, window
`augment.blur_window` of the view's side) and solarizes, then normalises
and flips (`crop_mirror_normalize`, HWC float32 or float16: channels_last once viewed as NCHW; bfloat16
is cast in torch). DALI reads sigma 0 as "derive it from the window", so blur and solarize run under
DALI's conditional execution: only the images their flags select go through them. The index rides
through the pipeline with its image, so a batch can never be paired with the wrong labels. Colour
operations run in DALI's fixed order, not torchvision's random one, on uint8 (rounded between steps).

The image sizes the crop boxes need come from the ImageFolder's index (header reads, once per file
and kept between runs); files the index knows to be bad were settled by data.on_error when the
dataset was built. In-memory datasets (CIFAR pickles, shapes) are fed as pixels and skip the decoder.

A file whose header parses but whose pixels do not (a truncated JPEG) is met by DALI's decoder, which
stops the pipeline and names only the sample's position in its batch, not which of the prefetched
batches it was in. The feeder keeps the dataset indices of the batches in flight, so the loader decodes
those files with PIL to find the culprits and applies data.on_error as the other backends do: raise
gives the dataset's one-line DataError for the first of them; skip feeds each one's substitute
(`load_usable`: the next good file, its bytes, size, index and label) from then on and rebuilds the
pipeline at the batch that failed. Substitution only changes what the sampler's rows point to, so the
batches that follow are those a loader that knew it from the start gives. When PIL decodes every file
in flight, DALI's error comes back as a DataError listing them.

EXIF orientation follows torchvision's convention, as every backend does: its default loader (PIL's
Image.open + convert("RGB")) ignores the orientation tag, so a file is read as stored. DALI's decoder
would rotate such a file, CPU and nvJPEG alike, while the crop boxes are drawn from PIL's unrotated
size: the views would come out rotated and smeared on one side. So the decoder runs with
adjust_orientation=False.
"""
from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .settings import AugmentConfig, LoaderConfig

from .augment import IMAGENET_MEAN, IMAGENET_STD, blur_window, sample_params, view_sizes
from .batch import Batch
from .datasets.base import DataError, ImageDataset
from .datasets.files import capped
from .sampler import ShardedEpochs, ShardedSampler, cpu_generator
from .stages import H2D_COPY, LOADER_WAIT, StageMarks

try:
    from nvidia.dali import Pipeline, fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError(f"loader.backend=dali needs NVIDIA DALI: pip install -e '.[dali]' ({e})") from e

# A forked child (a DataLoader worker) must never run DALI's destructor: it waits for pipeline threads
# that exist only in the parent, so a pipeline its garbage collector finds would hang it. The child
# takes a strong reference to every pipeline alive or pending collection at the fork, and exits
# without finalising them.
_PIPELINES: weakref.WeakSet = weakref.WeakSet()
_KEPT_IN_CHILD: list = []
os.register_at_fork(after_in_child=lambda: _KEPT_IN_CHILD.extend(_PIPELINES))

# Per view: roi_start, roi_end, mirror, brightness, contrast, saturation, hue, blur sigma, solarize.
PARAM_TYPES = [types.FLOAT, types.FLOAT, types.INT32, types.FLOAT, types.FLOAT, types.FLOAT, types.FLOAT,
               types.FLOAT, types.BOOL]
PARAM_NDIM = [1, 1, 0, 0, 0, 0, 0, 0, 0]
PARAMS = len(PARAM_TYPES)
_DRAWN = ("boxes", "flip", "jitter", "factors", "gray", "blur_sigma", "solarize")   # AugmentParams fields fed
# crop_mirror_normalize writes float32 or float16; bfloat16 views are cast from float32 in torch.
_DALI_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16, torch.bfloat16: types.FLOAT}
_DECODER = "fn.decoders.image"   # how DALI names the operator in the error it stops the pipeline with


def _sources(dataset: ImageDataset) -> tuple[np.ndarray, np.ndarray, bool]:
    """(dataset indices the sampler draws from, their (H, W) sizes, whether they are encoded files)."""
    if hasattr(dataset, "paths"):
        return np.arange(len(dataset)), dataset.sizes.copy(), True   # a copy: substitution edits it
    if hasattr(dataset, "images"):
        n, height, width = dataset.images.shape[:3]
        return np.arange(n), np.tile([height, width], (n, 1)), False
    raise DataError(f"loader.backend=dali reads image files or in-memory arrays, not {type(dataset).__name__}")


class _Recipe(NamedTuple):
    """The views' operators' constants: per view its output side and blur window (sized by that side:
    multi-crop views differ), then what all views share: normalisation (0..255 scale), solarize
    threshold (0..255 scale) and crop_mirror_normalize's output type."""
    sizes: tuple[int, ...]
    windows: tuple[int, ...]
    mean: list[float]
    std: list[float]
    threshold: float
    dtype: types.DALIDataType


def _solarize(images, threshold: float):
    """uint8 x >= threshold becomes 255 - x, as augment's solarize on [0, 1] (DALI has no select)."""
    return fn.cast(images + (images >= threshold) * (255 - 2 * images), dtype=types.UINT8)


def _view(images, params: list, recipe: _Recipe, view: int):
    """View `view`: crop and resize to its side, colour, blur, solarize, then flip and normalise (augment's
    order, the flip moved last: it commutes with the rest). Blur and solarize only touch the images they
    select."""
    start, end, mirror, brightness, contrast, saturation, hue, sigma, solarize = params
    x = fn.resize(images, size=[recipe.sizes[view]] * 2, roi_start=start, roi_end=end, antialias=True,
                  interp_type=types.INTERP_LINEAR)
    x = fn.color_twist(x, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    if sigma > 0:
        x = fn.gaussian_blur(x, sigma=sigma, window_size=recipe.windows[view])
    if solarize:
        x = _solarize(x, recipe.threshold)
    return fn.crop_mirror_normalize(x, mirror=mirror, mean=recipe.mean, std=recipe.std, output_layout="HWC",
                                    dtype=recipe.dtype)


@pipeline_def(enable_conditionals=True)
def _graph(source: Iterator[list], encoded: bool, decoder: dict, gpu: bool, recipe: _Recipe):
    """The pipeline's operators: the external source, decoding, then every view; outputs views + index.

    A pipeline_def so that DALI's AutoGraph turns the per-sample `if`s of `_view` into split/merge.
    """
    views = len(recipe.sizes)
    data, index, *params = fn.external_source(
        source=source, num_outputs=2 + PARAMS * views, batch=True,
        dtype=[types.UINT8, types.INT64] + PARAM_TYPES * views,
        ndim=[1 if encoded else 3, 0] + PARAM_NDIM * views, layout=[None if encoded else "HWC"])
    if encoded:
        images = fn.decoders.image(data, output_type=types.RGB, adjust_orientation=False, **decoder)
    else:
        images = data.gpu() if gpu else data
    outputs = [_view(images, params[PARAMS * v:PARAMS * (v + 1)], recipe, v) for v in range(views)]
    return (*outputs, index)


class _Feeder:
    """What batch (epoch, b) is made of, computed on the host: the pipeline's source.

    Kept apart from the loader so that the pipeline, whose source this is, does not reference the
    loader: without that cycle a dropped loader frees its pipeline and threads at once. `positions[row]`
    is the dataset index the sampler's row stands for, `sizes[row]` its image size; `in_flight` holds
    the indices fed for each (epoch, batch) the pipeline has not yet given back.
    """

    def __init__(self, dataset: ImageDataset, sampler: ShardedSampler, positions: np.ndarray, sizes: np.ndarray,
                 encoded: bool, augment_cfg: AugmentConfig, views: int):
        self.dataset, self.sampler, self.positions, self.sizes = dataset, sampler, positions, sizes
        self.encoded, self.augment_cfg, self.views = encoded, augment_cfg, views
        self.in_flight: dict[tuple[int, int], np.ndarray] = {}

    def view_params(self, epoch: int, batch: int, view: int, rows: np.ndarray) -> list[np.ndarray]:
        """One view's DALI arguments for this rank, drawn for the whole global batch (world-invariant).

        Images of one size share a sample_params call; with mixed sizes, one call per size in order.
        """
        generator = cpu_generator("dali-view", self.sampler.seed, epoch, batch, view)
        sizes = self.sizes[rows]
        drawn: dict[str, np.ndarray] = {}
        for height, width in np.unique(sizes, axis=0):
            group = np.flatnonzero((sizes == (height, width)).all(1))
            p = sample_params(len(group), int(height), int(width), self.augment_cfg, generator, view)
            for name in _DRAWN:
                value = getattr(p, name).numpy()
                drawn.setdefault(name, np.zeros((len(rows),) + value.shape[1:], value.dtype))[group] = value
        boxes, flip, jitter, factors, gray, sigma, solarize = (drawn[name][self.sampler.rank_slice()]
                                                               for name in _DRAWN)
        x0, y0, w, h = boxes.T.astype(np.float32)
        ones = np.ones(len(boxes), np.float32)
        return [np.stack([y0, x0], 1), np.stack([y0 + h, x0 + w], 1), flip.astype(np.int32),
                np.where(jitter, factors[:, 0], ones), np.where(jitter, factors[:, 1], ones),
                np.where(jitter, factors[:, 2], ones) * ~gray, np.where(jitter, factors[:, 3] * 360, 0 * ones),
                sigma.astype(np.float32), solarize]

    def inputs(self, epoch: int, batch: int) -> list:
        """Everything the pipeline needs for (epoch, batch): images, indices, then PARAMS per view."""
        rows = self.sampler.global_indices(epoch, batch).numpy()
        index = self.positions[rows[self.sampler.rank_slice()]]
        self.in_flight[epoch, batch] = index
        if self.encoded:
            images = [np.fromfile(self.dataset.paths[i], dtype=np.uint8) for i in index]
        else:
            images = [self.dataset.images[i] for i in index]
        out = [images, index.astype(np.int64)]
        for view in range(self.views):
            out += self.view_params(epoch, batch, view, rows)
        return out

    def batches(self, epoch: int, start: int) -> Iterator[list]:
        """Batches from (epoch, start) onwards, on into later epochs, for a new pipeline: nothing of
        the one it replaces is in flight any more."""
        self.in_flight.clear()
        while True:
            for b in range(start, self.sampler.num_batches):
                yield self.inputs(epoch, b)
            epoch, start = epoch + 1, 0

    def substitute(self, index: int, substitute: int) -> None:
        """Feed dataset image `substitute` wherever `index` was drawn: its bytes, index (so its label)
        and size (the crop boxes are drawn from sizes)."""
        rows = self.positions == index
        self.positions[rows] = substitute
        self.sizes[rows] = self.dataset.sizes[substitute]

    def settle(self, error: RuntimeError, epoch: int, batch: int) -> None:
        """After DALI's decoder stopped the pipeline at (epoch, batch): find the files in flight that PIL
        cannot decode either and apply data.on_error (raise: the first one's DataError; skip: substitute
        each one). DataError when PIL decodes them all."""
        fed = list(dict.fromkeys(int(i) for index in self.in_flight.values() for i in index))
        with ThreadPoolExecutor() as pool:   # PIL decodes with the GIL released
            failures = [(i, e) for i, e in zip(fed, pool.map(self._decode_error, fed)) if e is not None]
        if not failures:
            names = [str(self.dataset.paths[i]) for i in fed]
            raise DataError(f"loader.backend=dali: DALI could not decode a file that PIL can, in batch {batch} "
                            f"of epoch {epoch} or one prefetched after it (files: {capped(names, 5)}); re-save "
                            f"it as JPEG or PNG, or use loader.backend=torchvision") from error
        if self.dataset.on_error == "raise":
            raise failures[0][1] from None
        for index, _ in failures:
            self.substitute(index, self.dataset.load_usable(index)[1])

    def _decode_error(self, index: int) -> DataError | None:
        """The DataError the dataset gives for image `index`, or None when it decodes."""
        try:
            self.dataset.load_pil(index)
        except DataError as e:
            return e
        return None


class DaliLoader(ShardedEpochs, StageMarks):
    """Loader: one DALI pipeline fed batch by batch from the shared sampler, `loader.prefetch` deep.

    The pipeline runs ahead across epoch ends. When iteration resumes anywhere other than where it
    stands (load_state_dict, set_epoch to another epoch), it is rebuilt there, dropping what it held.
    """

    def __init__(self, dataset: ImageDataset, loader_cfg: LoaderConfig, augment_cfg: AugmentConfig,
                 image_size: int, device: torch.device | str, seed: int, rank: int = 0, world: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 out_dtype: torch.dtype = torch.float32):
        if out_dtype not in _DALI_DTYPES:
            raise ValueError(f"loader.backend=dali: views in {out_dtype} are not supported, only "
                             f"{', '.join(map(str, _DALI_DTYPES))}")
        positions, sizes, encoded = _sources(dataset)
        super().__init__(len(positions), loader_cfg.batch_size, seed, rank, world)
        self.feeder = _Feeder(dataset, self.sampler, positions, sizes, encoded, augment_cfg, loader_cfg.views)
        self.labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64)
        self.device = torch.device(device)
        self.cfg, self.out_dtype = loader_cfg, out_dtype
        sizes = tuple(view_sizes(augment_cfg, loader_cfg.views, image_size))
        self.recipe = _Recipe(sizes, tuple(blur_window(size, augment_cfg.blur_kernel_frac) for size in sizes),
                              [255 * m for m in mean], [255 * s for s in std],
                              255 * augment_cfg.solarize_threshold, _DALI_DTYPES[out_dtype])
        self._pipe: Pipeline | None = None
        self._at: tuple[int, int, int] | None = None     # (seed, epoch, batch) the pipeline yields next

    # -- the pipeline ----------------------------------------------------------------------------
    def _build(self, epoch: int, start: int) -> Pipeline:
        """A pipeline fed from (epoch, start); it has no random operator, so its own seed is unused."""
        gpu = self.device.type == "cuda"
        device_id = None
        if gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        decoder = {"device": "mixed", "hw_decoder_load": self.cfg.hw_decoder_load} if gpu else {"device": "cpu"}
        pipe = _graph(self.feeder.batches(epoch, start), self.feeder.encoded, decoder, gpu, self.recipe,
                      batch_size=self.sampler.rank_batch, num_threads=max(1, self.cfg.workers),
                      device_id=device_id, prefetch_queue_depth=self.cfg.prefetch)
        pipe.build()
        _PIPELINES.add(pipe)
        return pipe

    def _to_torch(self, tensors) -> torch.Tensor:
        """A DALI batch of (S, S, 3) as (B, 3, S, S) out_dtype channels_last on the loader's device."""
        dense = tensors.as_tensor()
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(dense, out, cuda_stream=stream)   # a copy: DALI reuses its output buffers
        return out.permute(0, 3, 1, 2).to(self.out_dtype)

    def _run(self, epoch: int, batch: int) -> list:
        """The pipeline's outputs for (epoch, batch); where DALI cannot decode a file, data.on_error
        settles it (`_Feeder.settle`) and, under skip, the pipeline is rebuilt at this batch."""
        while True:
            try:
                outputs = self._pipe.run()
            except RuntimeError as e:
                self._pipe, self._at = None, None   # DALI invalidated it: free its threads, rebuild when resumed
                if not (self.feeder.encoded and _DECODER in str(e)):
                    raise
                self.feeder.settle(e, epoch, batch)
                self._pipe = self._build(epoch, batch)
                continue
            self.feeder.in_flight.pop((epoch, batch))
            return outputs

    def __iter__(self) -> Iterator[Batch]:
        seed, epoch, start = self.sampler.seed, self.cursor.epoch, self.cursor.batch
        if self._at != (seed, epoch, start):
            self._pipe = None                  # frees the old pipeline's threads first
            self._pipe = self._build(epoch, start)
        for b in range(start, len(self)):
            *views, index = self._run(epoch, b)
            index = torch.from_numpy(np.array(index.as_array()))
            self._at = (seed, epoch, b + 1) if b + 1 < len(self) else (seed, epoch + 1, 0)
            self.cursor.advance()
            self.mark(LOADER_WAIT, H2D_COPY)        # DALI's outputs, copied into torch tensors
            out = Batch([self._to_torch(v) for v in views], self.labels[index].to(self.device),
                        index.to(self.device))
            self.mark(H2D_COPY)
            yield out
