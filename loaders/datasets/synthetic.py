"""The embedded default dataset: procedurally drawn shapes, generated on the fly (no download, no file).

The class is the shape; colour, background texture, position, scale and rotation are random nuisances.
Random-init features are dominated by colour, so kNN on them is weak, while an encoder trained to be
invariant to SimCLR's crops and colour jitter has to pick up shape: learning is measurable in minutes.
"""
from __future__ import annotations

import numpy as np

from .base import ArrayDataset

SUPERSAMPLE = 2  # draw at 2x and average down: anti-aliased edges
# Small tilts only: SimCLR's augmentations teach invariance to position, scale, mirroring and colour,
# not to rotation, so fully rotated shapes would leave orientation as the features' main content.
MAX_TILT = np.deg2rad(20)


def _disk(u, v):
    return u**2 + v**2 <= 0.8**2


def _ring(u, v):
    r = np.sqrt(u**2 + v**2)
    return (r <= 0.85) & (r >= 0.5)


def _square(u, v):
    return (np.abs(u) <= 0.65) & (np.abs(v) <= 0.65)


def _frame(u, v):
    return _square(u, v) & ~((np.abs(u) <= 0.35) & (np.abs(v) <= 0.35))


def _triangle(u, v):
    # Equilateral, apex up: above the base and below both slanted sides.
    return (v >= -0.45) & (v <= 0.9 - np.sqrt(3) * np.abs(u))


def _star(u, v):
    angle, r = np.arctan2(v, u), np.sqrt(u**2 + v**2)
    return r <= 0.35 + 0.5 * np.abs(np.cos(2.5 * angle))


def _plus(u, v):
    return ((np.abs(u) <= 0.22) & (np.abs(v) <= 0.85)) | ((np.abs(v) <= 0.22) & (np.abs(u) <= 0.85))


def _crescent(u, v):
    return _disk(u, v) & ~((u - 0.4) ** 2 + v**2 <= 0.6**2)


def _ell(u, v):
    return ((np.abs(u + 0.5) <= 0.22) & (np.abs(v) <= 0.8)) | ((np.abs(v - 0.6) <= 0.22) & (u >= -0.72) & (u <= 0.7))


def _bars(u, v):
    return (np.abs(u) <= 0.8) & ((np.abs(v - 0.45) <= 0.17) | (np.abs(v + 0.45) <= 0.17))


SHAPES = {"disk": _disk, "ring": _ring, "square": _square, "frame": _frame, "triangle": _triangle,
          "star": _star, "plus": _plus, "crescent": _crescent, "ell": _ell, "bars": _bars}


PALETTE = np.array([[0.90, 0.10, 0.10], [0.10, 0.60, 0.15], [0.15, 0.25, 0.90], [0.95, 0.85, 0.10],
                    [0.60, 0.15, 0.75], [0.05, 0.75, 0.80], [0.95, 0.50, 0.05], [0.92, 0.92, 0.92],
                    [0.12, 0.12, 0.12], [0.55, 0.35, 0.20]])


def _random_colours(rng: np.random.Generator, n: int):
    """Distinct foreground and background colours from a small palette, with a little brightness noise.

    Few colours on purpose: per-image random colours would let contrastive learning tell images apart
    by colour alone (colour jitter does not erase them), and it would never need the shape.
    """
    fg_idx = rng.integers(0, len(PALETTE), n)
    bg_idx = (fg_idx + rng.integers(1, len(PALETTE), n)) % len(PALETTE)
    shade = rng.uniform(0.85, 1.15, (n, 2, 1))
    return np.clip(PALETTE[fg_idx] * shade[:, 0], 0, 1), np.clip(PALETTE[bg_idx] * shade[:, 1], 0, 1)


def _textures(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Faint low-frequency stripes: background nuisance, faint so they cannot replace the shape as cue."""
    y, x = np.mgrid[0:size, 0:size] / size
    freq = rng.uniform(1, 4, (n, 1, 1))
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    amp = rng.uniform(0.0, 0.08, (n, 1, 1))
    return amp * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)


def shape_masks(labels: np.ndarray, size: int, scale: np.ndarray, angle: np.ndarray,
                centre: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], (N, size, size), of each shape placed by scale/angle/centre.

    scale, angle: (N,); centre: (N, 2) in [-1, 1] image coordinates (x, y).
    """
    n, hi = len(labels), size * SUPERSAMPLE
    grid = (np.arange(hi) + 0.5) / hi * 2 - 1  # pixel centres in [-1, 1]
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    scale, angle = scale[:, None, None], angle[:, None, None]
    dx, dy = gx - centre[:, 0, None, None], gy - centre[:, 1, None, None]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / scale
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / scale
    mask = np.zeros((n, hi, hi), dtype=np.float32)
    for label, shape in enumerate(SHAPES.values()):
        rows = labels == label
        mask[rows] = shape(u[rows], v[rows])
    return mask.reshape(n, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))


def draw_shapes(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, size, size, 3) images of the shapes named by `labels` (indices into SHAPES)."""
    n = len(labels)
    scale = rng.uniform(0.55, 0.9, n)
    angle = rng.uniform(-MAX_TILT, MAX_TILT, n)
    centre = rng.uniform(-1, 1, (n, 2)) * (1 - scale[:, None])
    mask = shape_masks(labels, size, scale, angle, centre)[..., None]
    fg, bg = _random_colours(rng, n)
    background = np.clip(bg[:, None, None, :] + _textures(rng, n, size)[..., None], 0, 1)
    image = mask * fg[:, None, None, :] + (1 - mask) * background
    return np.round(image * 255).astype(np.uint8)


def make_shapes(data_cfg, split: str) -> ArrayDataset:
    """The `shapes` split: balanced classes, deterministic in (data.seed, split)."""
    count = data_cfg.num_train if split == "train" else data_cfg.num_test
    rng = np.random.default_rng([data_cfg.seed, 0 if split == "train" else 1])
    labels = rng.permutation(np.arange(count) % len(SHAPES))
    images = np.empty((count, data_cfg.image_size, data_cfg.image_size, 3), dtype=np.uint8)
    for start in range(0, count, 1000):  # chunks bound the float64 working set
        images[start:start + 1000] = draw_shapes(labels[start:start + 1000], data_cfg.image_size, rng)
    return ArrayDataset(images=images, labels=labels, classes=list(SHAPES))
