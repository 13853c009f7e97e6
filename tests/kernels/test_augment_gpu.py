"""The augment kernel on a GPU: the loaders' batches (CIFAR's 32 px and 64 px views in one pass, ImageNet's
224 px split across programs), bf16 and fp16 outputs, every op order's kernel compiled once."""
import itertools

import pytest
import torch
from triton import knobs

from fastssl.kernels import colour_augment
from fastssl.kernels.reference import colour_augment_reference

pytestmark = pytest.mark.gpu
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1.6e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 1), ()])
@pytest.mark.parametrize("n, size", [(1024, 32), (256, 64), (64, 224)])
def test_loader_batch_matches_the_reference(dtype, tol, order, n, size):
    gen = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device="cuda", generator=gen)
    params = torch.rand(n, 8, device="cuda", generator=gen).round()
    params[:, 2:5] = 0.6 + 0.8 * torch.rand(n, 3, device="cuda", generator=gen)
    params[:, 5] = 0.2 * torch.rand(n, device="cuda", generator=gen) - 0.1
    kwargs = dict(order=order, mean=MEAN, std=STD, value_range=255.0, out_dtype=dtype)
    out = colour_augment(images.permute(0, 3, 1, 2), params, impl="triton", **kwargs)
    ref = colour_augment_reference(images.permute(0, 3, 1, 2), params, **{**kwargs, "out_dtype": torch.float32})
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    # fp32: the GPU's approximate division and FMA contraction differ from torch in the last bits.
    assert (out.float() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item() / 2)


@pytest.mark.parametrize("size", [64, 224], ids=["one pass", "two passes"])
def test_every_order_runs_the_kernels_compiled_for_the_first(monkeypatch, size):
    """The order is a runtime argument: once (0, 1, 2, 3) has run, the other 64 orders compile nothing."""
    images = torch.randint(0, 256, (8, size, size, 3), dtype=torch.uint8, device="cuda").permute(0, 3, 1, 2)
    params = torch.rand(8, 8, device="cuda")
    colour_augment(images, params, impl="triton", order=(0, 1, 2, 3), value_range=255.0)
    compiled = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kwargs: compiled.append(kwargs["repr"]))
    for order in (order for n in range(5) for order in itertools.permutations(range(4), n)):
        colour_augment(images, params, impl="triton", order=order, value_range=255.0)
    torch.cuda.synchronize()
    assert not compiled, compiled
