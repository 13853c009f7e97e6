"""Batched SimCLR augmentation: geometry, colour maths against torchvision, determinism."""
import dataclasses
import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from fastssl.config import AugmentConfig
from fastssl.loaders import augment as A

IDENTITY = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
NO_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def images(n=8, height=16, width=16, seed=0) -> torch.Tensor:
    """uint8 (n, H, W, 3) noise: every pixel differs, so any geometric error shows."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=generator)


def plain(x: torch.Tensor, mean=A.IMAGENET_MEAN, std=A.IMAGENET_STD) -> torch.Tensor:
    """The reference: (x / 255 - mean) / std, NCHW."""
    x = x.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def params(n, height, width, **fields) -> A.AugmentParams:
    """Fixed parameters: full-image box, nothing else applied, unless overridden."""
    base = dict(boxes=torch.tensor([[0.0, 0.0, width, height]]).repeat(n, 1), flip=torch.zeros(n, dtype=torch.bool),
                jitter=torch.zeros(n, dtype=torch.bool), factors=torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(n, 1),
                gray=torch.zeros(n, dtype=torch.bool), blur_sigma=torch.zeros(n),
                solarize=torch.zeros(n, dtype=torch.bool), order=())
    return A.AugmentParams(**(base | fields))


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_identity_settings_give_the_plain_normalised_image(layout):
    x = images()
    given = x if layout == "nhwc" else x.permute(0, 3, 1, 2).contiguous()
    out = A.augment(given, IDENTITY, 16, torch.Generator().manual_seed(3))
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, plain(x))               # full box, same size: resampling is exact


def test_crop_boxes_honour_scale_ratio_and_image_bounds():
    height, width, scale = 40, 48, (0.3, 0.7)
    boxes = A.sample_crop_boxes(4000, height, width, scale, torch.Generator().manual_seed(0))
    x0, y0, w, h = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= width).all() and (y0 + h <= height).all()
    # w and h are rounded from the sampled real sides, so each may be off by half a pixel.
    area = height * width
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all() and ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w - 0.5) / (h + 0.5) <= 4 / 3).all() and ((w + 0.5) / (h - 0.5) >= 3 / 4).all()
    frac, log_ratio = w * h / area, torch.log(w / h)
    assert frac.min() < 0.32 and frac.max() > 0.68
    assert log_ratio.min() < math.log(3 / 4) + 0.05 and log_ratio.max() > math.log(4 / 3) - 0.05
    # Same distribution as torchvision's sampler (first fitting try kept): compare means.
    torch.manual_seed(0)
    tv = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), [3 / 4, 4 / 3])
                       for _ in range(4000)], dtype=torch.float64)
    assert abs(w.mean() / width - tv[:, 3].mean() / width) < 0.02
    assert abs(h.mean() / height - tv[:, 2].mean() / height) < 0.02


def test_crop_fallback_is_torchvisions_central_crop():
    # 16 x 40 at scale 1: no box of ratio <= 4/3 fits, so every draw falls back.
    boxes = A.sample_crop_boxes(50, 16, 40, (1.0, 1.0), torch.Generator().manual_seed(0))
    top, left, h, w = T.RandomResizedCrop.get_params(torch.empty(3, 16, 40), [1.0, 1.0], [3 / 4, 4 / 3])
    assert (top, left, h, w) == (0, 9, 16, 21)
    assert torch.equal(boxes, torch.tensor([[left, top, w, h]], dtype=torch.float64).repeat(50, 1))


def test_resized_crop_matches_torchvision_up_and_down():
    x = images(4, 24, 32).permute(0, 3, 1, 2).float()
    boxes = torch.tensor([[0.0, 0.0, 32, 24], [3, 2, 9, 11], [20, 5, 12, 19], [1, 1, 30, 7]])
    for size in (16, 20):          # shrinks some boxes, enlarges others
        out = A.resized_crop(x, boxes, size)
        ref = torch.stack([TF.resized_crop(x[i], int(b[1]), int(b[0]), int(b[3]), int(b[2]), [size, size],
                                           antialias=True) for i, b in enumerate(boxes)])
        torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)   # 0..255 scale: 4e-6 of full range


def test_flip_flips_exactly():
    x = images()
    flip = torch.tensor([True, False] * 4)
    out = A.apply_params(x, params(8, 16, 16, flip=flip), 16)
    ref = plain(x)
    assert torch.equal(out[flip], ref[flip].flip(-1)) and torch.equal(out[~flip], ref[~flip])


def test_grayscale_uses_itu_601_luma_with_equal_channels():
    x = images()
    gray = torch.tensor([True] * 5 + [False] * 3)
    out = A.apply_params(x, params(8, 16, 16, gray=gray), 16, **NO_NORM)
    assert torch.equal(out[gray, 0], out[gray, 1]) and torch.equal(out[gray, 1], out[gray, 2])
    rgb = x.permute(0, 3, 1, 2).double() / 255
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(out[gray, 0].double(), luma[gray], atol=1e-6, rtol=0)
    assert torch.equal(out[~gray], rgb[~gray].float())


FACTORS = torch.tensor([0.0, 0.35, 0.6, 1.0, 1.3, 1.8])


@pytest.mark.parametrize("ours, theirs, factors, tol", [
    (A.adjust_brightness, TF.adjust_brightness, FACTORS, lambda f: 1e-6),
    # torchvision's luma weighs red 0.2989, ours 0.299: the grey differs by <= 1e-4, the blend by (1 - f) x that.
    (A.adjust_contrast, TF.adjust_contrast, FACTORS, lambda f: 1e-4 * abs(1 - f) + 1e-6),
    (A.adjust_saturation, TF.adjust_saturation, FACTORS, lambda f: 1e-4 * abs(1 - f) + 1e-6),
    (A.adjust_hue, TF.adjust_hue, torch.tensor([-0.5, -0.3, -0.07, 0.0, 0.1, 0.45]), lambda f: 1e-5),
], ids=["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(ours, theirs, factors, tol):
    x = images(len(factors), 12, 10).permute(0, 3, 1, 2).float() / 255
    x[0, :, :2] = 0.5                               # grey pixels: hue undefined, must stay grey
    out = ours(x, factors)
    for i, f in enumerate(factors.tolist()):
        ref = theirs(x[i], f)
        assert (out[i] - ref).abs().max() <= tol(f), f"factor {f}"


def test_jitter_applies_ops_in_order_and_only_where_drawn():
    x = images()
    jitter = torch.tensor([True, False] * 4)
    factors = torch.tensor([[1.3, 0.7, 1.5, 0.2]]).repeat(8, 1)
    out = A.apply_params(x, params(8, 16, 16, jitter=jitter, factors=factors, order=(3, 0)), 16, **NO_NORM)
    x01 = x.permute(0, 3, 1, 2).float() / 255
    expected = A.adjust_brightness(A.adjust_hue(x01, factors[:, 3]), factors[:, 0])
    assert torch.equal(out[jitter], expected[jitter]) and torch.equal(out[~jitter], x01[~jitter])
    assert not torch.allclose(expected, A.adjust_hue(A.adjust_brightness(x01, factors[:, 0]), factors[:, 3]))


def test_sampled_params_follow_the_config():
    cfg = AugmentConfig(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, brightness=0.4, contrast=0.0, hue=0.1)
    p = A.sample_params(4000, 32, 32, cfg, torch.Generator().manual_seed(0))
    assert abs(p.flip.float().mean() - 0.5) < 0.03 and abs(p.jitter.float().mean() - 0.8) < 0.03
    assert abs(p.gray.float().mean() - 0.2) < 0.03
    b, c, s, h = p.factors.unbind(1)
    assert b.min() >= 0.6 and b.max() <= 1.4 and b.max() - b.min() > 0.75
    assert (c == 1).all() and s.min() >= 0.6 and h.abs().max() <= 0.1 and h.abs().max() > 0.09
    assert sorted(p.order) == [0, 2, 3]             # contrast has strength 0: left out


def test_same_seed_same_output_and_global_rng_untouched():
    x, cfg = images(), AugmentConfig()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    a = A.augment(x, cfg, 16, torch.Generator().manual_seed(7))
    b = A.augment(x, cfg, 16, torch.Generator().manual_seed(7))
    c = A.augment(x, cfg, 16, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng)


def test_eval_transform_resizes_and_normalises():
    x = images(4, 20, 20)
    same = A.eval_transform(x, 20)
    assert same.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(same, plain(x))
    small = A.eval_transform(x, 12, **NO_NORM)
    ref = TF.resize(x.permute(0, 3, 1, 2).float() / 255, [12, 12], antialias=True)
    assert small.shape == (4, 3, 12, 12)
    torch.testing.assert_close(small, ref, atol=1e-5, rtol=0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="need uint8"):
        A.augment(torch.zeros(2, 8, 8, 3), AugmentConfig(), 8, torch.Generator())
    with pytest.raises(ValueError, match="no RGB axis"):
        A.augment(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), AugmentConfig(), 8, torch.Generator())


BYOL = AugmentConfig(blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])


@pytest.mark.parametrize("size, window", [(8, 3), (32, 3), (64, 7), (96, 11), (224, 23)])
def test_blur_window_is_a_tenth_of_the_side_odd_and_at_least_3(size, window):
    assert A.blur_window(size, 0.1) == window


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_matches_torchvision_and_sigma_zero_is_exact_identity(sigma):
    x = images(3, 20, 20).permute(0, 3, 1, 2).float() / 255
    out = A.gaussian_blur(x, torch.tensor([sigma, 0.0, sigma]), 7)
    for i in (0, 2):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [7, 7], [sigma, sigma]), atol=2e-6, rtol=0)
    assert torch.equal(out[1], x[1])


def test_gaussian_blur_needs_an_image_larger_than_half_the_window():
    with pytest.raises(ValueError, match="window 23 needs images larger than 11 px"):
        A.gaussian_blur(torch.zeros(1, 3, 8, 8), torch.ones(1), 23)


def test_per_view_probabilities_follow_byols_asymmetry():
    first = A.sample_params(4000, 32, 32, BYOL, torch.Generator().manual_seed(0), view=0)
    second = A.sample_params(4000, 32, 32, BYOL, torch.Generator().manual_seed(0), view=1)
    assert (first.blur_sigma > 0).all() and first.blurred and not first.solarize.any()
    assert abs((second.blur_sigma > 0).float().mean() - 0.1) < 0.02
    assert abs(second.solarize.float().mean() - 0.2) < 0.02
    assert first.blur_sigma.min() >= 0.1 and first.blur_sigma.max() <= 2.0
    third = A.sample_params(10, 32, 32, BYOL, torch.Generator().manual_seed(0), view=2)   # lists repeat
    assert (third.blur_sigma > 0).all() and not third.solarize.any()


def test_blur_and_solarize_draws_leave_the_other_streams_alone():
    plain_cfg, byol_params = AugmentConfig(), A.sample_params(64, 32, 32, BYOL, torch.Generator().manual_seed(5), 1)
    plain_params = A.sample_params(64, 32, 32, plain_cfg, torch.Generator().manual_seed(5), 1)
    for name in ("boxes", "flip", "jitter", "factors", "gray"):
        assert torch.equal(getattr(byol_params, name), getattr(plain_params, name)), name
    assert byol_params.order == plain_params.order and not plain_params.blurred


def test_blur_then_solarize_compose_as_torchvision_after_the_colour_ops():
    """Order: flip, jitter, grayscale, blur, solarize, normalise (BYOL's), checked with torchvision."""
    x, n = images(4, 24, 24), 4
    sigma, solar = torch.tensor([0.8, 0.0, 1.5, 0.0]), torch.tensor([True, True, False, False])
    gray, flip = torch.tensor([False, True, False, True]), torch.tensor([True, False, False, True])
    p = dataclasses.replace(params(n, 24, 24, blur_sigma=sigma, solarize=solar, gray=gray, flip=flip),
                            blurred=True, threshold=0.6, blur_frac=0.2)
    out = A.apply_params(x, p, 24)
    window = A.blur_window(24, 0.2)
    for i in range(n):
        ref = x[i].permute(2, 0, 1).float() / 255
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        ref = TF.rgb_to_grayscale(ref, 3) if gray[i] else ref
        ref = TF.gaussian_blur(ref, [window, window], [sigma[i].item()] * 2) if sigma[i] > 0 else ref
        ref = TF.solarize(ref, 0.6) if solar[i] else ref
        ref = TF.normalize(ref, A.IMAGENET_MEAN, A.IMAGENET_STD)
        # torchvision's grayscale weighs red 0.2989 against our 0.299 (< 1e-4 / std).
        torch.testing.assert_close(out[i], ref, atol=5e-4 if gray[i] else 1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_views_are_the_float_views_rounded(dtype):
    x, cfg = images(), AugmentConfig()
    full = A.apply_params(x, A.sample_params(8, 16, 16, cfg, torch.Generator().manual_seed(1)), 16)
    half = A.apply_params(x, A.sample_params(8, 16, 16, cfg, torch.Generator().manual_seed(1)), 16, out_dtype=dtype)
    assert half.dtype == dtype and half.is_contiguous(memory_format=torch.channels_last)
    # The float view rounded to dtype: within one unit in the last place of each value.
    assert ((half.float() - full).abs() <= torch.finfo(dtype).eps * full.abs().clamp(min=1)).all()


def test_params_already_on_the_device_are_not_copied_again():
    p = A.sample_params(4, 8, 8, AugmentConfig(), torch.Generator().manual_seed(0))
    assert p.to(torch.device("cpu")) is p
    moved = p[1:3]
    assert moved.to("cpu") is moved and torch.equal(moved.boxes, p.boxes[1:3])
