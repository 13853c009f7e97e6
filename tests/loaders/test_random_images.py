"""data.dataset=random: data-free images for throughput runs, deterministic, any size and class count."""
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fastssl.config import ConfigError, load_config
from fastssl.loaders.datasets import build_dataset
from fastssl.loaders.datasets.random_images import NOISE


def _cfg(**kw):
    base = dict(num_train=300, num_test=40, image_size=24, num_classes=7, seed=3)
    return SimpleNamespace(dataset="random", **{**base, **kw})


def test_sizes_classes_and_determinism():
    train = build_dataset(_cfg(), "train")
    assert train.to_array(24).shape == (300, 24, 24, 3) and train.images.dtype == np.uint8
    counts = np.bincount(train.labels, minlength=7)
    assert counts.sum() == 300 and counts.max() - counts.min() <= 1       # balanced
    assert train.classes == [f"class{c}" for c in range(7)]
    again = build_dataset(_cfg(), "train")
    np.testing.assert_array_equal(train.images, again.images)
    np.testing.assert_array_equal(train.labels, again.labels)
    test = build_dataset(_cfg(), "test")
    assert len(test) == 40 and not np.array_equal(test.images[:5], train.images[:5])


def test_pixels_are_a_class_gradient_plus_uniform_noise():
    """Mean over a class's images is its noiseless gradient (its corners differ); the residuals are the
    uniform noise on [-NOISE, NOISE]: std sqrt(((2 NOISE + 1)^2 - 1) / 12) away from clipping, and
    bounded by NOISE plus the class mean's own error (100 images: under 12 levels)."""
    ds = build_dataset(_cfg(num_train=700, image_size=16), "train")
    cls = ds.images[ds.labels == 2].astype(np.float64)
    mean = cls.mean(axis=0)
    residual = cls - mean
    assert np.abs(residual).max() <= NOISE + 12
    unclipped = (mean > NOISE + 5) & (mean < 250 - NOISE)
    expected_std = np.sqrt(((2 * NOISE + 1) ** 2 - 1) / 12)
    assert residual[:, unclipped].std() == pytest.approx(expected_std, rel=0.1)
    assert max(np.abs(mean[0, 0] - mean[-1, -1]).max(), np.abs(mean[0, -1] - mean[-1, 0]).max()) > 5


def test_a_resnet50_sized_set_takes_well_under_a_second_per_hundred_images():
    start = time.perf_counter()
    ds = build_dataset(_cfg(num_train=256, image_size=224, num_classes=10), "train")
    per_image = (time.perf_counter() - start) / 256
    assert ds.images.shape == (256, 224, 224, 3)
    assert per_image < 0.005, f"{per_image * 1e3:.1f} ms per 224 px image (shapes costs ~70 ms)"


@pytest.mark.parametrize("sets,message", [
    (["data.num_classes=0"], "data.num_classes=0: must be in [1, data.num_train"),
    (["data.num_train=4", "data.num_classes=5"], "data.num_classes=5: must be in [1, data.num_train = 4]"),
])
def test_bad_values_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, ["data.dataset=random", *sets])
