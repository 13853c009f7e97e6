"""Multi-crop (augment.crops): every backend gives view v at its crop group's side and crop scale, and
the blur and the fused colour kernel work on the small views.

Each backend's views are rebuilt here from the random choices its generators draw (boxes, blur sigma)
with another implementation of the arithmetic: torchvision's functional ops for the tensor and
torchvision backends, OpenCV for ffcv (whose decoder resizes with OpenCV's INTER_AREA). The boxes are
drawn with the scale written in this file, not read back from the config, so a view given another
group's scale or size shows. DALI's views are checked in test_dali_backend.py, the cross-backend
layout and sharding in test_backends.py, the small views' decoded pixels in test_same_pixels.py.
"""
import importlib.util

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import v2

from fastssl.config import AugmentConfig, LoaderConfig
from fastssl.loaders.settings import CropGroup
from fastssl.loaders.augment import (apply_colour, apply_params, blur_window, gaussian_blur, sample_crop_boxes,
                                     sample_params, view_sizes)
from fastssl.loaders.batch import views_label
from fastssl.loaders.datasets import ArrayDataset
from fastssl.loaders.sampler import cpu_generator, derive_seed
from fastssl.loaders.tensor_backend import TensorLoader
from fastssl.loaders.torchvision_backend import TorchvisionLoader, train_transform

N, SIDE, LOCAL, SEED = 16, 32, 16, 5
SIZES = [SIDE, SIDE, LOCAL, LOCAL]
SCALES = [(0.14, 1.0), (0.14, 1.0), (0.05, 0.14), (0.05, 0.14)]
WINDOWS = {SIDE: 11, LOCAL: 5}           # blur_kernel_frac 0.3: 9.6 -> 10 -> 11 and 4.8 -> 5
ZERO, ONE = (0.0,) * 3, (1.0,) * 3       # mean and std that leave the [0, 1] pixels as they are
IMAGES = np.random.default_rng(0).integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)
HAS_FFCV = importlib.util.find_spec("ffcv") is not None


def crops(**kw) -> AugmentConfig:
    """2 global 32 px and 2 local 16 px views; flip, jitter and grayscale off unless `kw` says otherwise."""
    kw = {"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, **kw}
    return AugmentConfig(crops=[CropGroup(2, SIDE, [0.14, 1.0]), CropGroup(2, LOCAL, [0.05, 0.14])], **kw)


def as_float(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in 0..255."""
    return torch.from_numpy(image).permute(2, 0, 1).float()


def test_view_sizes_and_labels():
    cfg = crops()
    cfg.validate(SIDE, 4)
    assert view_sizes(cfg, 4, SIDE) == SIZES and view_sizes(AugmentConfig(), 3, 24) == [24, 24, 24]
    assert views_label([32, 32] + [16] * 6) == "2x32px+6x16px"
    assert views_label([32, 32] + [16] * 6, batch=256) == "2x256x32px+6x256x16px"
    assert views_label([32, 32], batch=256) == "2x256x32px"       # single-size shapes as before multi-crop


def test_tensor_views_are_each_groups_crop_resized_and_blurred_at_its_own_side():
    """View v = torchvision's resized_crop of the box drawn with v's group scale, to v's side, blurred with
    the window of v's side (11 px at 32, 5 px at 16), for the sigma the view's generator drew."""
    cfg = crops(blur_p=[1.0], blur_kernel_frac=0.3)
    batch = next(iter(TensorLoader(ArrayDataset(IMAGES, np.zeros(N)), LoaderConfig(batch_size=N, views=4), cfg,
                                   SIDE, "cpu", SEED, mean=ZERO, std=ONE)))
    assert [tuple(v.shape) for v in batch.views] == [(N, 3, s, s) for s in SIZES]
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in batch.views)
    for v, (view, size, scale) in enumerate(zip(batch.views, SIZES, SCALES)):
        boxes = sample_crop_boxes(N, SIDE, SIDE, scale, cpu_generator("tensor-view", SEED, 0, 0, v))
        sigma = sample_params(N, SIDE, SIDE, cfg, cpu_generator("tensor-view", SEED, 0, 0, v), v).blur_sigma
        assert (sigma > 0).all()
        area = boxes[:, 2] * boxes[:, 3] / SIDE ** 2
        assert ((area > scale[0] - 0.02) & (area < scale[1] + 0.02)).all()   # w, h rounded to whole pixels
        for row, i in enumerate(batch.index.tolist()):
            x0, y0, w, h = boxes[row].int().tolist()
            crop = TF.resized_crop(as_float(IMAGES[i]), y0, x0, h, w, [size, size], antialias=True) / 255
            expected = TF.gaussian_blur(crop, [WINDOWS[size]] * 2, [float(sigma[row])] * 2)
            torch.testing.assert_close(view[row], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", [LOCAL, 13])
@pytest.mark.parametrize("blur", [False, True], ids=["one pass", "around the blur"])
def test_fused_colour_kernel_equals_its_reference_on_small_views(side, blur):
    """The augment kernel (Triton; its interpreter on CPU) on 16 px and odd 13 px local views, every op on,
    gives what its torch reference gives."""
    cfg = crops(flip_p=0.5, jitter_p=1.0, grayscale_p=0.5, blur_p=[0.0, 0.0, 1.0 if blur else 0.0],
                solarize_p=[0.5], blur_kernel_frac=0.3)
    params = sample_params(8, SIDE, SIDE, cfg, torch.Generator().manual_seed(side), view=2)
    assert params.blurred == blur and params.order
    images = torch.from_numpy(np.random.default_rng(side).integers(0, 256, (8, side, side, 3), dtype=np.uint8))
    fused = apply_colour(images, params, impl="triton")
    reference = apply_colour(images, params, impl="reference")
    assert fused.shape == (8, 3, side, side) and fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)


def test_the_blur_window_fits_every_allowed_view():
    """gaussian_blur needs side > window // 2: true for every side crops allow (>= 8) and every
    blur_kernel_frac (<= 1), and at the extreme (8 px, frac 1: a 9 px window) it is torchvision's blur."""
    for side in range(8, 600):
        for frac in (0.01, 0.1, 0.5, 1.0):
            assert blur_window(side, frac) // 2 < side
    window = blur_window(8, 1.0)
    assert window == 9
    x = torch.from_numpy(IMAGES[:2, :8, :8]).permute(0, 3, 1, 2).float() / 255
    out = gaussian_blur(x, torch.tensor([1.5, 0.7]), window)
    for i, sigma in enumerate((1.5, 0.7)):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [9, 9], [sigma, sigma]), atol=2e-6, rtol=0)


def torchvision_batch(cfg: AugmentConfig, workers: int):
    ld = TorchvisionLoader(ArrayDataset(IMAGES, np.zeros(N)), LoaderConfig(batch_size=N, views=4, workers=workers),
                           cfg, SIDE, "cpu", SEED, mean=ZERO, std=ONE)
    return next(iter(ld))


def test_torchvision_views_crop_with_their_groups_scale_and_side():
    """View v of image i = the RandomResizedCrop box torchvision draws under (seed, epoch, i, v)'s derived
    seed with v's group scale, resized by PIL to v's side: exactly. Worker processes change nothing, and the
    blur window of each view is its own side's."""
    cfg = crops()
    batch = torchvision_batch(cfg, workers=0)
    assert [tuple(v.shape) for v in batch.views] == [(N, 3, s, s) for s in SIZES]
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in batch.views)
    for v, (view, size, scale) in enumerate(zip(batch.views, SIZES, SCALES)):
        for row, i in enumerate(batch.index.tolist()):
            image = Image.fromarray(IMAGES[i])
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derive_seed("torchvision-view", SEED, 0, i, v))
                box = v2.RandomResizedCrop(size, scale=scale).make_params([image])
            expected = TF.pil_to_tensor(TF.resized_crop(image, **box, size=[size, size], antialias=True))
            torch.testing.assert_close(view[row], expected.float() * (1 / 255), atol=1e-7, rtol=0)
    parallel = torchvision_batch(cfg, workers=1)
    assert all(torch.equal(a, b) for a, b in zip(parallel.views, batch.views, strict=True))
    blurs = [[t.transforms[0].kernel_size for t in train_transform(crops(blur_kernel_frac=0.3), SIDE, ZERO, ONE, v)
              .transforms if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.GaussianBlur)]
             for v in range(4)]
    assert blurs == [[(WINDOWS[s], WINDOWS[s])] for s in SIZES]


def smooth_images(n: int = N) -> np.ndarray:
    """Gradients that differ per image: smooth, so that OpenCV's area filter and augment's bilinear one agree
    closely; image i's red ramp is offset by i."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    return np.stack([np.stack([x * 6 + i, y * 7, (x + y) * 3 + 5 * i], -1) for i in range(n)]).astype(np.uint8)


@pytest.mark.skipif(not HAS_FFCV, reason="ffcv is not installed")
def test_ffcv_views_decode_each_groups_box_at_its_side(tmp_path):
    """View v = OpenCV's INTER_AREA resize of the box drawn with v's group scale, to v's side: exactly (the
    decoder's own resampler). Against augment's bilinear crop of the same boxes (the tensor backend's
    arithmetic) the views are within FFCV_MEAN / FFCV_MAX levels on these smooth images."""
    import cv2

    from fastssl.config import Config
    from fastssl.loaders.convert import convert
    from fastssl.loaders.factory import build_train_loader

    images = smooth_images()
    data = ArrayDataset(images, np.zeros(N, np.int64))
    cfg = Config()
    cfg.data.image_size, cfg.train.seed, cfg.augment = SIDE, SEED, crops()
    cfg.loader.backend, cfg.loader.batch_size, cfg.loader.views, cfg.loader.workers = "ffcv", N, 4, 1
    cfg.loader.beton = str(convert(data, tmp_path / "smooth.beton", raw=True, workers=1).path)
    batch = next(iter(build_train_loader(cfg.load_settings(), data, "cpu", mean=ZERO, std=ONE)))
    assert [tuple(v.shape) for v in batch.views] == [(N, 3, s, s) for s in SIZES]
    for v, (view, size, scale) in enumerate(zip(batch.views, SIZES, SCALES)):
        generator = cpu_generator("ffcv-view", SEED, 0, 0, v)
        params = sample_params(N, SIDE, SIDE, cfg.augment, generator, v)        # colour first, then the boxes
        boxes = sample_crop_boxes(N, SIDE, SIDE, scale, generator)
        order = images[batch.index.numpy()]
        expected = torch.stack([
            torch.from_numpy(cv2.resize(image[y0:y0 + h, x0:x0 + w], (size, size), interpolation=cv2.INTER_AREA))
            for image, (x0, y0, w, h) in zip(order, boxes.int().tolist())]).permute(0, 3, 1, 2).float() / 255
        torch.testing.assert_close(view, expected, atol=1e-7, rtol=0)
        params.boxes = boxes
        bilinear = apply_params(torch.from_numpy(order), params, size, ZERO, ONE)
        levels = (view - bilinear).abs() * 255
        assert levels.mean() < FFCV_MEAN and levels.max() < FFCV_MAX, (v, levels.mean(), levels.max())


FFCV_MEAN, FFCV_MAX = 1.0, 3.0   # 0..255 levels: OpenCV's area filter vs augment's bilinear, smooth images
                                 # (measured: mean 0.45-0.64, max 1.8-2.3 over the four views)
