"""SimCLR augmentation for a whole batch at once, in torch, on the device that holds the images.

Two steps, so that randomness and arithmetic stay apart:
- `sample_params` draws every random choice of a batch (crop box, flip, colour factors, grayscale)
  on the host from an explicit CPU generator: a few numbers per image, identical on every device,
  never a device sync, and a batch's augmentation is a pure function of the generator's seed.
- `apply_params` runs them on the images' device: uint8 (B,H,W,3) or (B,3,H,W) in, float32
  normalised (B,3,S,S) channels_last out.

Random-resized-crop is one batched matmul per axis with per-image resampling matrices (bilinear,
antialiased when shrinking), equal to torchvision's resized_crop(antialias=True) on float tensors.
Chosen over torchvision.ops.roi_align and affine_grid + grid_sample because on CPU it was the
fastest (256 images of 32 px, one thread: 4.6 ms of CPU time against 5.5 for grid_sample and 6.0
for roi_align; two threads: tied with grid_sample, twice as fast as roi_align, whose CPU kernel is
single-threaded): a small dense BLAS product instead of per-pixel index arithmetic. It is also
exact for the identity crop and the flip (matrices of 0s and 1s; the flip reverses matrix rows),
which grid_sample is not (its normalised coordinates round), and it crops like torchvision: samples
never read outside the box, where roi_align blends in the pixels next to it.

Colour jitter applies brightness, contrast, saturation and hue in a random order drawn once per
batch (torchvision draws one per image; per-image orders in batch would cost four evaluations of
every op). The luma weights are ITU-R 601 (0.299, 0.587, 0.114), as PIL, and so the torchvision
backend, uses; torchvision's tensor kernels use 0.2989 for red.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from fastssl.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)          # aspect-ratio range of the crop, as torchvision's default
CROP_ATTEMPTS = 10                   # tries before the central fallback, as torchvision
LUMA = (0.299, 0.587, 0.114)
COLOR_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass
class AugmentParams:
    """Every random choice for n images; the fields are per image except `order`.

    boxes: (n, 4) float crop boxes x0, y0, w, h in whole pixels. flip: (n,) bool.
    jitter: (n,) bool, whether colour jitter applies. factors: (n, 4) brightness, contrast and
    saturation factors and the hue shift. gray: (n,) bool. order: indices into COLOR_OPS, applied in
    this order to the jittered images (ops of strength 0 are left out).
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    gray: torch.Tensor
    order: tuple[int, ...]

    def __getitem__(self, rows: slice) -> AugmentParams:
        return AugmentParams(self.boxes[rows], self.flip[rows], self.jitter[rows],
                             self.factors[rows], self.gray[rows], self.order)

    def to(self, device: torch.device | str) -> AugmentParams:
        """Move to `device` in one transfer (the fields are packed into one float tensor)."""
        packed = torch.cat([self.boxes.float(), self.flip[:, None].float(), self.jitter[:, None].float(),
                            self.factors.float(), self.gray[:, None].float()], 1)
        packed = packed.to(device, non_blocking=True)
        boxes, flip, jitter, factors, gray = packed.split([4, 1, 1, 4, 1], 1)
        return AugmentParams(boxes, flip[:, 0] > 0, jitter[:, 0] > 0, factors, gray[:, 0] > 0, self.order)


def _check_generator(generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise ValueError(f"generator on {generator.device}: augmentation parameters are drawn on the "
                         f"host, pass a CPU torch.Generator")


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                      generator: torch.Generator, ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """(n, 4) float64 boxes x0, y0, w, h drawn as torchvision's RandomResizedCrop.get_params does.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`, up to CROP_ATTEMPTS tries
    for a box that fits, else the largest central crop with the ratio clamped into range. All tries are
    drawn at once and the first fitting one kept: the same distribution, without a Python loop.
    """
    _check_generator(generator)
    shape = (n, CROP_ATTEMPTS)
    area = _uniform(shape, *scale, generator) * (height * width)
    aspect = torch.exp(_uniform(shape, math.log(ratio[0]), math.log(ratio[1]), generator))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)       # index of the first fitting try
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]

    image_ratio = width / height
    if image_ratio < ratio[0]:
        fallback = (width, round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        fallback = (round(height * ratio[1]), height)
    else:
        fallback = (width, height)
    found = fits.any(1)
    w = torch.where(found, w, float(fallback[0]))
    h = torch.where(found, h, float(fallback[1]))
    # Offsets uniform over the valid integer positions; the fallback is centred instead.
    u = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    x0 = torch.minimum(torch.floor(u[:, 0] * (width - w + 1)), width - w)
    y0 = torch.minimum(torch.floor(u[:, 1] * (height - h + 1)), height - h)
    x0 = torch.where(found, x0, float((width - fallback[0]) // 2))
    y0 = torch.where(found, y0, float((height - fallback[1]) // 2))
    return torch.stack([x0, y0, w, h], 1)


def sample_params(n: int, height: int, width: int, cfg: AugmentConfig,
                  generator: torch.Generator) -> AugmentParams:
    """Draw the augmentation of n images of height x width from `generator` (CPU).

    The draws happen in a fixed layout whatever the config, so changing one strength never shifts
    the random stream of another choice.
    """
    boxes = sample_crop_boxes(n, height, width, (cfg.crop_scale_min, cfg.crop_scale_max), generator)
    flip = torch.rand(n, generator=generator) < cfg.flip_p
    jitter = torch.rand(n, generator=generator) < cfg.jitter_p
    strengths = (cfg.brightness, cfg.contrast, cfg.saturation)
    factors = torch.stack([_uniform((n,), max(0.0, 1 - s), 1 + s, generator) for s in strengths]
                          + [_uniform((n,), -cfg.hue, cfg.hue, generator)], 1).float()
    gray = torch.rand(n, generator=generator) < cfg.grayscale_p
    perm = torch.randperm(len(COLOR_OPS), generator=generator).tolist()
    active = [s > 0 for s in strengths + (cfg.hue,)]
    order = tuple(op for op in perm if active[op]) if bool(jitter.any()) else ()
    return AugmentParams(boxes, flip, jitter, factors, gray, order)


def _resample_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(n, out_size, in_size) rows resampling the span [start, start + length) of an axis to out_size.

    Bilinear (triangle) weights around each output pixel's centre, the triangle widened by the
    shrink factor when shrinking (antialiasing), truncated to the span and renormalised: what
    torchvision's antialiased bilinear resize of the cropped span computes.
    """
    length = length.float()[:, None, None]
    step = length / out_size
    centre = (torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None] + 0.5) * step
    pixel = torch.arange(in_size, device=start.device, dtype=torch.float32) + 0.5 - start.float()[:, None, None]
    pixel = torch.where((pixel > 0) & (pixel < length), pixel, torch.inf)     # outside the span: weight 0
    weight = (pixel - centre).abs_().div_(torch.clamp(step, min=1.0)).neg_().add_(1).clamp_(min=0)
    return weight.div_(weight.sum(-1, keepdim=True))


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each float (B,C,H,W) image to its box (x0, y0, w, h), resize to size x size, then flip
    horizontally where `flip` is set. Returns (B,C,size,size) contiguous float32."""
    _, _, height, width = images.shape
    rows = _resample_matrix(boxes[:, 1], boxes[:, 3], height, size)
    cols = _resample_matrix(boxes[:, 0], boxes[:, 2], width, size)
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of float (B,3,H,W) images, (B,1,H,W)."""
    return (LUMA[0] * images[:, 0] + LUMA[1] * images[:, 1] + LUMA[2] * images[:, 2]).unsqueeze(1)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = _per_image(factor)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by a per-image factor (B,), on [0, 1] float images."""
    return (images * _per_image(factor)).clamp(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean luma by a per-image factor (B,)."""
    return _blend(images, luma(images).mean((1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its own luma image by a per-image factor (B,)."""
    return _blend(images, luma(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by a per-image shift (B,) in turns ([-0.5, 0.5]), keeping HSV value and saturation.

    Hue is computed in sixths of a turn; each channel is then value - chroma * t(k), t the trapezoid
    clamp(min(k, 4 - k), 0, 1) at k = (hue6 + 5, 3, 1) mod 6 for R, G, B: the HSV -> RGB map without
    branching on the sector.
    """
    r, g, b = images.unbind(1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    divisor = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue6 = torch.where(value == r, (g - b) / divisor,
                       torch.where(value == g, (b - r) / divisor + 2, (r - g) / divisor + 4))
    hue6 = hue6 + 6 * shift.view(-1, 1, 1)
    channels = []
    for offset in (5, 3, 1):
        k = torch.remainder(hue6 + offset, 6)
        channels.append(value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, 1)


_COLOR_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """Apply the colour ops `order` (indices into COLOR_OPS) with per-image factors (B, 4)."""
    for op in order:
        images = _COLOR_FNS[op](images, factors[:, op])
    return images


@functools.lru_cache(maxsize=16)
def _channel_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(1,3,1,1) constant on `device`, made once: no host-to-device copy per batch."""
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1).to(device)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel for [0, 1] float (B,3,H,W) images, written channels_last."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device,
                      memory_format=torch.channels_last)
    torch.sub(images, _channel_constant(tuple(mean), images.device), out=out)
    return out.div_(_channel_constant(tuple(std), images.device))


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """A (B,3,H,W) view of uint8 images given as (B,H,W,3) (last dim 3 wins) or (B,3,H,W)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images: need uint8 (B,H,W,3) or (B,3,H,W), got {images.dtype} {tuple(images.shape)}")
    if images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2)
    if images.shape[1] == 3:
        return images
    raise ValueError(f"images of shape {tuple(images.shape)}: no RGB axis of size 3 at dim 1 or 3")


def apply_params(images: torch.Tensor, params: AugmentParams, size: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Augment uint8 images with `params` (moved to the images' device): float32 (B,3,S,S) channels_last.

    Resampling runs on 0..255 values (so the identity crop stays exact even under TF32 matmuls), then
    colour works on [0, 1] as torchvision's float kernels do.
    """
    params = params.to(images.device)
    x = resized_crop(as_nchw(images).float(), params.boxes, size, params.flip)
    x = x.div_(255).clamp_(0, 1)
    if params.order:
        x = torch.where(_per_image(params.jitter), color_jitter(x, params.factors, params.order), x)
    x = torch.where(_per_image(params.gray), luma(x).expand_as(x), x)
    return normalize(x, mean, std)


def augment(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """One SimCLR view of each uint8 image: sample_params from `generator`, then apply_params."""
    nchw = as_nchw(images)
    params = sample_params(nchw.shape[0], nchw.shape[2], nchw.shape[3], cfg, generator)
    return apply_params(images, params, size, mean, std)


def eval_transform(images: torch.Tensor, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Resize uint8 images to size x size (antialiased bilinear) and normalise: float32 channels_last."""
    x = as_nchw(images).float()
    height, width = x.shape[2:]
    if (height, width) != (size, size):
        full = torch.tensor([[0.0, 0.0, width, height]], device=x.device).expand(x.shape[0], 4)
        x = resized_crop(x, full, size)
    return normalize(x.div_(255).clamp_(0, 1), mean, std)
