"""loader.dtype: views in the training precision's dtype by default, explicit dtypes checked against it."""
import numpy as np
import pytest
import torch

from fastssl.config import Config, ConfigError
from fastssl.engine.precision import view_dtype
from fastssl.loaders.datasets.base import ArrayDataset
from fastssl.loaders.factory import build_train_loader


@pytest.mark.parametrize("loader_dtype, precision, expected", [
    ("auto", "fp32", torch.float32), ("auto", "bf16", torch.bfloat16), ("auto", "fp16", torch.float16),
    ("float32", "bf16", torch.float32), ("bfloat16", "bf16", torch.bfloat16), ("float16", "fp16", torch.float16),
])
def test_view_dtype_follows_the_precision_or_the_setting(loader_dtype, precision, expected):
    assert view_dtype(loader_dtype, precision) == expected


def test_half_views_under_fp32_training_are_refused_naming_the_key():
    """train.precision=auto resolves to fp32 on a CPU: bf16 views would not match the fp32 weights."""
    with pytest.raises(ConfigError, match="loader.dtype='bfloat16': half-precision views need the training "
                                          "precision of the same dtype, and train.precision resolved to fp32"):
        view_dtype("bfloat16", "fp32")


def test_tensor_backend_writes_bf16_views_equal_to_the_fp32_views_rounded():
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.integers(0, 256, (16, 12, 12, 3), dtype=np.uint8), np.arange(16) % 3)
    cfg = Config()
    cfg.data.image_size, cfg.loader.batch_size = 12, 8
    cfg.augment.blur_p, cfg.augment.solarize_p = [1.0, 0.0], [0.0, 1.0]
    full = next(iter(build_train_loader(cfg.load_settings(), data, "cpu")))
    half = next(iter(build_train_loader(cfg.load_settings(), data, "cpu", out_dtype=torch.bfloat16)))
    for v_half, v_full in zip(half.views, full.views, strict=True):
        assert v_half.dtype == torch.bfloat16 and v_half.is_contiguous(memory_format=torch.channels_last)
        assert ((v_half.float() - v_full).abs() <= torch.finfo(torch.bfloat16).eps * v_full.abs().clamp(min=1)).all()
