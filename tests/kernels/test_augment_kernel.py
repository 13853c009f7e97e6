"""The augment kernel (Triton, interpreter on CPU) against its torch reference and against torchvision.

The reference's colour ops are checked against torchvision in tests/loaders/test_augment.py; here
the kernel must compute what the reference computes, for every op order, both stages, every input
layout and output dtype, and images split across several programs (the contrast mean is then a sum
of per-slice partials).
"""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastssl.kernels import colour_augment
from fastssl.kernels.augment import BLOCK, CONTRAST
from fastssl.kernels.reference import AUGMENT_COLUMNS, colour_augment_reference

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)


def batch(n: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC noise viewed as (n,3,H,W), and params with every flag set in about half the images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    params = torch.rand(n, len(AUGMENT_COLUMNS), generator=g).round()           # flags 0/1
    params[:, 2:5] = torch.rand(n, 3, generator=g) * 1.4 + 0.3                 # brightness, contrast, saturation
    params[:, 5] = torch.rand(n, generator=g) - 0.5                            # hue shift in turns
    params[0, :2] = 1.0                                                        # image 0 flipped and jittered
    return images, params


def check(images, params, tol=2e-6, **kwargs):
    out = colour_augment(images, params, impl="triton", **kwargs)
    ref = colour_augment_reference(images, params, **kwargs)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.float() - ref.float()).abs().max().item() <= tol
    return out


@pytest.mark.parametrize("order", [(), (0,), (1,), (2,), (3,), (0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 1), (1, 3)])
def test_every_order_matches_the_reference(order):
    images, params = batch(6, 13, 11)
    check(images, params, order=order, mean=MEAN, std=STD, value_range=255.0)


@pytest.mark.parametrize("colour, finish", [(True, False), (False, True)])
def test_stages_alone_and_chained_equal_the_whole(colour, finish):
    images, params = batch(4, 9, 12, seed=1)
    whole = dict(order=(1, 3, 0), mean=MEAN, std=STD, value_range=255.0, solarize_threshold=0.4)
    staged = check(images, params, **whole, colour=True, finish=False)
    assert staged.dtype == torch.float32 and 0 <= staged.min() and staged.max() <= 1
    finished = check(staged, params, **{**whole, "value_range": 1.0}, colour=False, finish=True)
    torch.testing.assert_close(finished, colour_augment_reference(images, params, **whole), atol=2e-6, rtol=0)


def test_image_split_across_programs_keeps_the_whole_image_contrast_mean():
    """One image of 3 BLOCKs runs as 3 programs on the CPU grid; contrast needs the mean of all."""
    images, params = batch(1, 48, 64, seed=2)
    assert 48 * 64 > 2 * BLOCK
    params[0, 1] = 1.0
    check(images, params, order=(0, CONTRAST), value_range=255.0)
    check(images, params, order=(2, 3, CONTRAST), value_range=255.0)


@pytest.mark.parametrize("layout", ["nhwc-uint8", "nchw-float", "sliced-float"])
def test_input_layouts_read_in_place(layout):
    images, params = batch(3, 10, 10, seed=3)
    if layout == "nchw-float":
        images = images.float().contiguous()                   # the crop's output: 0..255 floats, NCHW
    elif layout == "sliced-float":
        images = images.float()[:, :, 1:-1, ::2]                # non-contiguous, odd strides
    check(images, params, order=(1, 2), mean=MEAN, std=STD, value_range=255.0)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_outputs_are_the_reference_rounded(dtype, tol):
    """tol: one unit in the last place at |x| <= 2.5 (the normalised range here)."""
    images, params = batch(4, 8, 8, seed=4)
    check(images, params, tol=tol, order=(0, 1), mean=MEAN, std=STD, value_range=255.0, out_dtype=dtype)


def test_identity_params_give_the_plain_normalised_image_exactly():
    images, params = batch(5, 7, 9, seed=5)
    params.zero_()
    out = colour_augment(images, params, impl="triton", mean=MEAN, std=STD, value_range=255.0)
    plain = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(out, plain)


def test_single_ops_match_torchvision():
    """The kernel against torchvision itself (not only our reference), one op per image."""
    images, params = batch(4, 12, 10, seed=6)
    params[:, :2] = torch.tensor([0.0, 1.0])                  # jitter, no flip
    params[:, 6:] = 0.0
    x = images.float() / 255
    for op, theirs in [(0, TF.adjust_brightness), (3, TF.adjust_hue)]:
        out = colour_augment(images, params, impl="triton", order=(op,), value_range=255.0)
        for i in range(len(images)):
            assert (out[i] - theirs(x[i], params[i, 2 + op].item())).abs().max() <= 1e-5
    params[:, 0], params[:, 1], params[:, 7] = 1.0, 0.0, 1.0   # flip and solarize only
    out = colour_augment(images, params, impl="triton", value_range=255.0, solarize_threshold=0.3)
    assert torch.equal(out, TF.solarize(TF.horizontal_flip(x), 0.3))


def test_batch_of_one_and_empty_batch():
    images, params = batch(1, 5, 5, seed=7)
    check(images, params, order=(3, 1), value_range=255.0)
    empty = colour_augment(images[:0], params[:0], impl="triton", value_range=255.0)
    assert empty.shape == (0, 3, 5, 5)


@pytest.mark.parametrize("call, match", [
    (lambda x, p: colour_augment(x[:, :2], p), r"\(B,3,H,W\)"),
    (lambda x, p: colour_augment(x, p[:, :5]), "params must be"),
    (lambda x, p: colour_augment(x, p, order=(0, 0)), "distinct"),
    (lambda x, p: colour_augment(x, p, order=(4,)), "distinct"),
    (lambda x, p: colour_augment(x, p, out_dtype=torch.int32), "out_dtype"),
    (lambda x, p: colour_augment(x, p, colour=False, finish=False), "nothing to do"),
    (lambda x, p: colour_augment(x, p, impl="fast"), "impl"),
])
def test_bad_arguments_are_named(call, match):
    images, params = batch(2, 4, 4)
    with pytest.raises(ValueError, match=match):
        call(images, params)
