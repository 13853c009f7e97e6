"""The torchvision backend's per-view recipe: blur and solarize where the config puts them, views in the
loader's dtype. Every other op is the identity here, so a view shows only the op under test."""
import numpy as np
import pytest
import torch

from fastssl.config import AugmentConfig, LoaderConfig
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD, blur_window, gaussian_blur
from fastssl.loaders.datasets import ArrayDataset
from fastssl.loaders.torchvision_backend import TorchvisionLoader

N, SIDE = 4, 16
IDENTITY = dict(crop_scale_min=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
IMAGES = np.random.default_rng(0).integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)


def first_batch(cfg: AugmentConfig, views=2, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_dtype=torch.float32):
    """The first batch (all N images) and the [0, 1] float images it was made from, in its order."""
    ld = TorchvisionLoader(ArrayDataset(IMAGES, np.zeros(N)), LoaderConfig(batch_size=N, views=views, workers=0),
                           cfg, SIDE, "cpu", seed=0, mean=mean, std=std, out_dtype=out_dtype)
    batch = next(iter(ld))
    # x * (1 / 255), as torchvision's ToDtype(scale=True), not x / 255: they differ in the last bit.
    return batch, torch.from_numpy(IMAGES).permute(0, 3, 1, 2).float().mul(1 / 255)[batch.index]


def test_blur_follows_each_views_probability_with_a_sigma_in_range():
    """blur_p [1, 0]: view 0 is augment.gaussian_blur (an implementation apart from torchvision's) of the
    image for a sigma in [min, max] and the configured window; view 1 is the image itself, exactly."""
    cfg = AugmentConfig(**IDENTITY, blur_p=[1.0, 0.0], blur_sigma_min=0.5, blur_sigma_max=2.0,
                        blur_kernel_frac=0.3)
    batch, images = first_batch(cfg, mean=(0.0,) * 3, std=(1.0,) * 3)      # views are the [0, 1] pixels
    assert torch.equal(batch.views[1], images)
    window, sigmas = blur_window(SIDE, cfg.blur_kernel_frac), torch.linspace(0.5, 2.0, 1501)
    assert window == 5
    for image, view in zip(images, batch.views[0]):
        candidates = gaussian_blur(image.expand(len(sigmas), -1, -1, -1).contiguous(), sigmas, window)
        error = (candidates - view).abs().amax((1, 2, 3))
        assert error.min() < 1e-3                  # one sigma on the grid (step 0.001) gives this view
        assert (view - image).abs().amax() > 0.1   # and it is blurred, not the image


def test_solarize_with_p_1_is_the_solarized_normalised_image_exactly():
    cfg = AugmentConfig(**IDENTITY, solarize_p=[1.0], solarize_threshold=0.6)
    batch, images = first_batch(cfg, views=1)
    solarized = torch.where(images >= 0.6, 1 - images, images)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(batch.views[0], (solarized - mean) / std, rtol=0, atol=1e-6)
    assert not torch.equal(solarized, images)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_views_come_out_in_the_requested_dtype(dtype):
    cfg = AugmentConfig(blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])   # BYOL's recipe, the rest at its defaults
    reference, _ = first_batch(cfg)
    batch, _ = first_batch(cfg, out_dtype=dtype)
    for view, ref in zip(batch.views, reference.views):
        assert view.dtype == dtype and view.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(view, ref.to(dtype))    # the float32 views, rounded once
