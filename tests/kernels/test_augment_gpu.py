"""The augment kernel on a GPU: ImageNet-size batches, bf16 and fp16 outputs, the multi-slice grid."""
import pytest
import torch

from fastssl.kernels import colour_augment
from fastssl.kernels.reference import colour_augment_reference

pytestmark = pytest.mark.gpu
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1.6e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 1), ()])
def test_imagenet_batch_matches_the_reference(dtype, tol, order):
    gen = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randint(0, 256, (64, 224, 224, 3), dtype=torch.uint8, device="cuda", generator=gen)
    params = torch.rand(64, 8, device="cuda", generator=gen).round()
    params[:, 2:5] = 0.6 + 0.8 * torch.rand(64, 3, device="cuda", generator=gen)
    params[:, 5] = 0.2 * torch.rand(64, device="cuda", generator=gen) - 0.1
    kwargs = dict(order=order, mean=MEAN, std=STD, value_range=255.0, out_dtype=dtype)
    out = colour_augment(images.permute(0, 3, 1, 2), params, impl="triton", **kwargs)
    ref = colour_augment_reference(images.permute(0, 3, 1, 2), params, **{**kwargs, "out_dtype": torch.float32})
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    # fp32: the GPU's approximate division and FMA contraction differ from torch in the last bits.
    assert (out.float() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item() / 2)
