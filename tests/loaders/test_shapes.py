"""The embedded default dataset: deterministic, balanced, and its classes are the shapes drawn."""
import numpy as np

from fastssl.config import DataConfig
from fastssl.loaders.datasets.synthetic import SHAPES, make_shapes, shape_masks


def test_deterministic_balanced_and_splits_differ():
    cfg = DataConfig(num_train=200, num_test=50)
    a, b = make_shapes(cfg, "train"), make_shapes(cfg, "train")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.bincount(a.labels).tolist() == [20] * 10
    assert a.classes == list(SHAPES)
    test = make_shapes(cfg, "test")
    assert test.images.shape == (50, 32, 32, 3) and not np.array_equal(test.images[:10], a.images[:10])


def test_shape_areas_match_their_geometry():
    """Coverage of a shape equals its analytic area in image pixels, at any rotation and position."""
    size, n = 64, 8
    rng = np.random.default_rng(0)
    scale, angle = rng.uniform(0.5, 0.9, n), rng.uniform(0, 2 * np.pi, n)
    centre = rng.uniform(-1, 1, (n, 2)) * (1 - scale[:, None])
    pixels_per_unit_area = (size / 2) ** 2
    analytic = {  # areas in shape units (the shape functions' coordinates), scaled by scale^2
        "disk": np.pi * 0.8**2,
        "ring": np.pi * (0.85**2 - 0.5**2),
        "square": 1.3**2,
        "frame": 1.3**2 - 0.7**2,
        "triangle": 0.5 * (2 * 1.35 / np.sqrt(3)) * 1.35,
    }
    names = list(SHAPES)
    for name, area in analytic.items():
        labels = np.full(n, names.index(name))
        covered = shape_masks(labels, size, scale, angle, centre).sum(axis=(1, 2))
        expected = area * scale**2 * pixels_per_unit_area
        np.testing.assert_allclose(covered, expected, rtol=0.04)
