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

Colour (flip, jitter, grayscale, solarize, normalise) is the fused `augment` kernel
(fastssl.kernels.colour_augment: Triton on CUDA, its torch reference on CPU), one pass from the
crop's output to the normalised channels_last view. Colour jitter applies brightness, contrast,
saturation and hue in a random order drawn once per batch (torchvision draws one per image; per-image
orders in batch would cost four evaluations of every op). The luma weights are ITU-R 601 (0.299,
0.587, 0.114), as PIL, and so the torchvision backend, uses; torchvision's tensor kernels use 0.2989
for red. Gaussian blur (BYOL, SimCLR on ImageNet) sits between grayscale and solarize, so a batch
with blurred images runs the kernel in two stages around it; the blur is two batched matmuls with
per-image Gaussian matrices (reflect padding), as the crop.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .settings import AugmentConfig
from fastssl.kernels import colour_augment
from fastssl.kernels.reference import (COLOR_OPS, LUMA, adjust_brightness, adjust_contrast,  # noqa: F401
                                       adjust_hue, adjust_saturation, luma, solarize)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)          # aspect-ratio range of the crop, as torchvision's default
CROP_ATTEMPTS = 10                   # tries before the central fallback, as torchvision


@dataclass
class AugmentParams:
    """Every random choice for n images; the tensor fields are per image, the rest per batch.

    boxes: (n, 4) float crop boxes x0, y0, w, h in whole pixels. flip: (n,) bool.
    jitter: (n,) bool, whether colour jitter applies. factors: (n, 4) brightness, contrast and
    saturation factors and the hue shift. gray: (n,) bool. blur_sigma: (n,) Gaussian blur sigma in
    output pixels, 0 for no blur. solarize: (n,) bool. order: indices into COLOR_OPS, applied in
    this order to the jittered images (ops of strength 0 are left out). blur_frac: the blur window's
    side as a fraction of the output side; threshold: solarize's, on [0, 1]; blurred: whether any
    image blurs (known on the host, so no device sync decides the two-stage path).
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    gray: torch.Tensor
    blur_sigma: torch.Tensor
    solarize: torch.Tensor
    order: tuple[int, ...] = ()
    blur_frac: float = 0.1
    threshold: float = 0.5
    blurred: bool = False

    def __getitem__(self, rows: slice) -> AugmentParams:
        return dataclasses.replace(self, **{f: getattr(self, f)[rows] for f in _PER_IMAGE})

    def to(self, device: torch.device | str) -> AugmentParams:
        """Move to `device` in one transfer (the per-image fields are packed into one float tensor);
        already there (apply_params moves them before apply_colour asks again): self, no copy."""
        if self.boxes.device == torch.device(device):
            return self
        fields = [getattr(self, f) for f in _PER_IMAGE]
        packed = torch.cat([t.float().reshape(len(t), -1) for t in fields], 1).to(device, non_blocking=True)
        parts = packed.split([1 if t.ndim == 1 else t.shape[1] for t in fields], 1)
        moved = {f: (part[:, 0] if t.ndim == 1 else part).to(torch.bool if t.dtype == torch.bool else part.dtype)
                 for f, t, part in zip(_PER_IMAGE, fields, parts)}
        return dataclasses.replace(self, **moved)

    def colour_table(self) -> torch.Tensor:
        """(n, 8) float32 in the augment kernel's column order (kernels.reference.AUGMENT_COLUMNS)."""
        return torch.cat([self.flip[:, None].float(), self.jitter[:, None].float(), self.factors.float(),
                          self.gray[:, None].float(), self.solarize[:, None].float()], 1)


_PER_IMAGE = ("boxes", "flip", "jitter", "factors", "gray", "blur_sigma", "solarize")


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
                  generator: torch.Generator, view: int = 0) -> AugmentParams:
    """Draw the augmentation of view `view` of n images of height x width from `generator` (CPU).

    The draws happen in a fixed layout whatever the config, so changing one strength never shifts
    the random stream of another choice. `view` picks the per-view probabilities (blur, solarize) and,
    under multi-crop (augment.crops), the crop scale of the view's group.
    """
    boxes = sample_crop_boxes(n, height, width, cfg.view_crop(view, height)[1], generator)
    flip = torch.rand(n, generator=generator) < cfg.flip_p
    jitter = torch.rand(n, generator=generator) < cfg.jitter_p
    strengths = (cfg.brightness, cfg.contrast, cfg.saturation)
    factors = torch.stack([_uniform((n,), max(0.0, 1 - s), 1 + s, generator) for s in strengths]
                          + [_uniform((n,), -cfg.hue, cfg.hue, generator)], 1).float()
    gray = torch.rand(n, generator=generator) < cfg.grayscale_p
    perm = torch.randperm(len(COLOR_OPS), generator=generator).tolist()
    active = [s > 0 for s in strengths + (cfg.hue,)]
    order = tuple(op for op in perm if active[op]) if bool(jitter.any()) else ()
    blur = torch.rand(n, generator=generator) < cfg.for_view("blur_p", view)
    sigma = _uniform((n,), cfg.blur_sigma_min, cfg.blur_sigma_max, generator).float()
    solar = torch.rand(n, generator=generator) < cfg.for_view("solarize_p", view)
    return AugmentParams(boxes, flip, jitter, factors, gray, torch.where(blur, sigma, 0.0), solar, order,
                         cfg.blur_kernel_frac, cfg.solarize_threshold, bool(blur.any()))


def view_sizes(cfg: AugmentConfig, views: int, image_size: int) -> list[int]:
    """Each view's output side: its crop group's size under augment.crops, else image_size for all."""
    return [cfg.view_crop(view, image_size)[0] for view in range(views)]


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


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each float (B,C,H,W) image to its box (x0, y0, w, h) and resize to size x size.
    Returns (B,C,size,size) contiguous float32."""
    _, _, height, width = images.shape
    rows = _resample_matrix(boxes[:, 1], boxes[:, 3], height, size)
    cols = _resample_matrix(boxes[:, 0], boxes[:, 2], width, size)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)


def blur_window(size: int, frac: float) -> int:
    """The Gaussian window side for size x size images: frac x size rounded, made odd, at least 3."""
    side = max(3, round(frac * size))
    return side + 1 - side % 2


def _blur_matrix(sigma: torch.Tensor, size: int, window: int) -> torch.Tensor:
    """(n, size, size) matrices that blur one axis with a per-image Gaussian (sigma 0: identity).

    Row i spreads the normalised window exp(-k^2 / 2 sigma^2), k in [-window//2, window//2], over
    the pixels i + k, reflected at the borders as torch's 'reflect' padding does (so the result is
    torchvision's gaussian_blur). Requires size > window // 2.
    """
    half = window // 2
    offsets = torch.arange(-half, half + 1, device=sigma.device, dtype=torch.float32)
    safe = torch.where(sigma > 0, sigma, 1.0)[:, None]
    weights = torch.exp(-0.5 * (offsets / safe) ** 2)
    weights = torch.where(sigma[:, None] > 0, weights / weights.sum(1, keepdim=True), (offsets == 0).float())
    source = torch.arange(size, device=sigma.device)[:, None] + offsets.long()          # (size, window)
    source = torch.where(source < 0, -source, torch.where(source >= size, 2 * (size - 1) - source, source))
    matrix = torch.zeros(len(sigma), size, size, device=sigma.device)
    return matrix.scatter_add_(2, source.expand(len(sigma), -1, -1), weights[:, None, :].expand(-1, size, -1))


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, window: int) -> torch.Tensor:
    """Blur float (B,C,S,S) images, each with its own sigma (B,) (0: unchanged, exactly)."""
    size = images.shape[-1]
    if size <= window // 2:
        raise ValueError(f"gaussian_blur: window {window} needs images larger than {window // 2} px, got {size}")
    matrix = _blur_matrix(sigma.float(), size, window)[:, None]
    return matrix @ images @ matrix.transpose(-1, -2)


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


def apply_colour(images: torch.Tensor, params: AugmentParams, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, value_range: float = 255.0,
                 out_dtype: torch.dtype = torch.float32, impl: str = "auto") -> torch.Tensor:
    """Flip, colour jitter, grayscale, blur, solarize and normalise images already at their output size.

    images: (B,3,S,S) or uint8 (B,S,S,3), any dtype, values in [0, value_range]. Returns out_dtype
    (B,3,S,S) channels_last: one pass of the augment kernel, two around the blur when any image blurs.
    """
    if images.dtype == torch.uint8:
        images = as_nchw(images)
    params = params.to(images.device)
    table = params.colour_table()
    finish = dict(mean=tuple(mean), std=tuple(std), solarize_threshold=params.threshold, out_dtype=out_dtype,
                  impl=impl)
    if not params.blurred:
        return colour_augment(images, table, order=params.order, value_range=value_range, **finish)
    x = colour_augment(images, table, order=params.order, value_range=value_range, finish=False, impl=impl)
    x = gaussian_blur(x, params.blur_sigma, blur_window(x.shape[-1], params.blur_frac))
    return colour_augment(x, table, colour=False, **finish)


def apply_params(images: torch.Tensor, params: AugmentParams, size: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 out_dtype: torch.dtype = torch.float32, impl: str = "auto") -> torch.Tensor:
    """Augment uint8 images with `params` (moved to the images' device): (B,3,S,S) channels_last.

    The crop resamples 0..255 values (so the identity crop stays exact even under TF32 matmuls);
    apply_colour then works on [0, 1] as torchvision's float kernels do.
    """
    params = params.to(images.device)
    x = resized_crop(as_nchw(images).float(), params.boxes, size)
    return apply_colour(x, params, mean, std, 255.0, out_dtype, impl)


def augment(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
            view: int = 0) -> torch.Tensor:
    """View `view` of each uint8 image: sample_params from `generator`, then apply_params."""
    nchw = as_nchw(images)
    params = sample_params(nchw.shape[0], nchw.shape[2], nchw.shape[3], cfg, generator, view)
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
