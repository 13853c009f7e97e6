"""The augment kernel (Triton, interpreter on CPU) against its torch reference and against torchvision.

The reference's colour ops are checked against torchvision in tests/loaders/test_augment.py; here
the kernel must compute what the reference computes, for every op order, both stages, every input
layout and output dtype, on both paths: an image of at most ONE_PASS_MAX pixels in one program (the
contrast mean over its block), a larger one split across several programs (the mean a sum of per-
slice partials). And the variants Triton compiles must not depend on the op order.
"""
import inspect
import itertools

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from triton.runtime import KernelInterface

from fastssl.kernels import augment, colour_augment
from fastssl.kernels.augment import CONTRAST, ONE_PASS_MAX
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


@pytest.mark.parametrize("height, width", [(13, 11), (70, 61)], ids=["one pass", "two passes"])
@pytest.mark.parametrize("order", [(), (0,), (1,), (2,), (3,), (0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 1), (1, 3)])
def test_every_order_matches_the_reference(order, height, width):
    images, params = batch(6, height, width)
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
    """One image of 5 blocks runs as 5 programs on the CPU grid; contrast needs the mean of all."""
    images, params = batch(1, 80, 64, seed=2)
    assert 80 * 64 > ONE_PASS_MAX
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


@pytest.mark.parametrize("height, width", [(32, 32), (40, 40), (64, 64)])
@pytest.mark.parametrize("order", [(1, 0, 2, 3), (0, 1, 3, 2), (3, 2, 1, 0), (2, 3, 0, 1)])
def test_one_pass_contrast_at_every_position(order, height, width):
    """One program an image; its block of 1024 (all pixels), 2048 (1600: masked lanes) or 4096 pixels.
    Contrast's mean comes after the ops before it; flip, gray and solarize around it. tol: the mean
    sums in another order than torch's (1 ulp apart), and a hue after it rounds hue6 (up to 13, ulp
    1e-6) differently: up to 1e-6 in [0, 1], 5e-6 after / std (the two-pass kernel did the same)."""
    images, params = batch(4, height, width, seed=8)
    params[:, 0] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    params[:, 1] = 1.0
    params[:, 6] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    params[:, 7] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    check(images, params, tol=1e-5, order=order, mean=MEAN, std=STD, value_range=255.0, solarize_threshold=0.6)


@pytest.mark.parametrize("case, tol", [("batch of 1", 2e-6), ("sliced uint8 NHWC", 2e-6), ("float NCHW", 2e-6),
                                       ("bf16 out", 1.6e-2), ("fp16 out", 2e-3)])
def test_one_pass_inputs_and_outputs(case, tol):
    """Contrast after hue and saturation, before brightness. tol: as
    test_half_outputs_are_the_reference_rounded, at |x| <= 3."""
    images, params = batch(3, 36, 40, seed=9)
    params[:, 1] = 1.0
    kwargs = dict(order=(3, 2, 1, 0), mean=MEAN, std=STD, value_range=255.0)
    if case == "batch of 1":
        images, params = images[:1], params[:1]
    elif case == "sliced uint8 NHWC":
        images = images[:, :, 2:-2, 1:-3]                 # a 32 x 36 window, the whole batch's strides
    elif case == "float NCHW":
        images = images.float().contiguous()
    else:
        kwargs["out_dtype"] = torch.bfloat16 if case == "bf16 out" else torch.float16
    check(images, params, tol=tol, **kwargs)


@pytest.mark.parametrize("height, width, one_pass", [(64, 64, True), (17, 241, False)])
def test_one_pass_up_to_one_pass_max_pixels(monkeypatch, height, width, one_pass):
    """4096 = ONE_PASS_MAX pixels: the main kernel alone, one program an image; 4097: contrast's
    partial sums, then the main kernel over slices of the image."""
    assert height * width - ONE_PASS_MAX == (0 if one_pass else 1)
    launches = spy_launches(monkeypatch, launch=True)
    images, params = batch(2, height, width, seed=10)
    check(images, params, order=(3, CONTRAST, 0), mean=MEAN, std=STD, value_range=255.0)
    kernels = [(key[0], grid[1] > 1, ("ONE_PASS", True) in key) for grid, key in launches]
    assert kernels == ([("_augment_kernel", False, True)] if one_pass else
                       [("_luma_partials_kernel", True, False), ("_augment_kernel", True, False)])


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


def compile_key(kernel, args, kwargs) -> tuple:
    """What Triton compiles a launch of `kernel` into: its constexpr values, each tensor's dtype and
    16-byte alignment, how each int it specialises is specialised (1: a constant; a multiple of 16: a
    divisibility hint; both as Triton 3.x does unless do_not_specialize names it), and the launch
    options (num_warps)."""
    signature = inspect.signature(kernel.fn)
    parameters = signature.parameters
    bound = signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in parameters})
    unspecialised = set(getattr(kernel, "do_not_specialize", None) or
                        getattr(kernel, "kwargs", {}).get("do_not_specialize") or ())
    key = []
    for index, (name, value) in enumerate(bound.arguments.items()):
        if "constexpr" in str(parameters[name].annotation):     # the class, or its name under PEP 563
            key.append((name, value))
        elif isinstance(value, torch.Tensor):
            key.append((name, value.dtype, value.data_ptr() % 16 == 0))
        elif isinstance(value, int) and not {index, name} & unspecialised:
            key.append((name, "1" if value == 1 else "16" if value % 16 == 0 else ""))
    options = sorted((k, v) for k, v in kwargs.items() if k not in parameters)
    return (kernel.fn.__name__, *key, *options)


ALL_ORDERS = [order for n in range(5) for order in itertools.permutations(range(4), n)]   # 65, 24 of all four


def spy_launches(monkeypatch, launch: bool) -> list:
    """Replaces the module's kernels (its *_kernel functions) by spies that record each launch as
    (grid, compile_key) and run it only where `launch`."""
    launches = []
    for name, kernel in vars(augment).items():
        if name.endswith("_kernel") and isinstance(kernel, KernelInterface):
            def launcher(grid, kernel=kernel):
                def record(*args, **kwargs):
                    launches.append((grid, compile_key(kernel, args, kwargs)))
                    if launch:
                        kernel[grid](*args, **kwargs)
                return record
            monkeypatch.setattr(augment, name, type("Spy", (), {"__getitem__": staticmethod(launcher)})())
    return launches


def test_compiled_variants_do_not_depend_on_the_op_order(monkeypatch):
    """Every ordered subset of the colour ops (65, the 24 full orders among them), for the loaders'
    image sizes (32, 64, 224 px) and batch sizes, uint8 NHWC and float NCHW inputs, both stages and
    each alone, into fp32 and bf16: each launch is recorded as the key Triton would compile it under
    (compile_key), and nothing is launched. Bound: a problem (shape, dtypes, stages) compiles at most
    2 variants whatever the order, the main kernel and, when contrast runs on a two-pass image, its
    partial-sum kernel; all 65 orders together compile exactly what (0, 1, 2, 3) alone does. The order
    is a runtime argument; as constexprs (the old kernel) it compiled up to 96 variants per problem: 65
    main kernels and 31 partial-sum kernels."""
    launches = spy_launches(monkeypatch, launch=False)
    per_problem, of_one_order = [], set()
    for (n, size), layout in itertools.product([(1, 32), (256, 32), (8, 64), (2, 224), (64, 224)], ["u8", "float"]):
        images = torch.empty(n, size, size, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
        if layout == "float":
            images = torch.empty(n, 3, size, size)                 # the crop's output
        params = torch.rand(n, len(AUGMENT_COLUMNS))
        for stages in [dict(out_dtype=torch.float32), dict(out_dtype=torch.bfloat16), dict(finish=False),
                       dict(colour=False)]:
            keys = set()
            for order in ALL_ORDERS:
                launches.clear()
                colour_augment(images, params, impl="triton", order=order, **stages)
                keys.update(key for _, key in launches)
                if order == (0, 1, 2, 3):
                    of_one_order.update(key for _, key in launches)
            per_problem.append(keys)
    assert max(map(len, per_problem)) <= 2, [len(keys) for keys in per_problem]
    assert set().union(*per_problem) == of_one_order
