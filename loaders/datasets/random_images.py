"""`data.dataset=random`: data-free images for throughput benchmarks, generated in milliseconds.

A benchmark of the training step should not wait for data to be made: the embedded `shapes` set costs
about 70 ms per image at 224 px, so a ResNet-50 benchmark would spend minutes drawing. These images
are per-class colour gradients plus uniform noise: any size and class count, deterministic in
(data.seed, split), made by a few vectorised torch operations per chunk. The class shows in the
gradient's direction and colours, so a kNN over them is above chance, but nothing here is a
learning benchmark: the point is bytes of the right shape at no cost.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import ArrayDataset

NOISE = 48          # +- uint8 levels of per-pixel noise on top of the gradient
CHUNK = 256         # images per vectorised step: bounds the float32 working set to ~150 MB at 224 px


def _class_styles(classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the gradient's direction (cos, sin) and its two end colours in [0, 255]."""
    angle = torch.arange(classes) * (2 * math.pi / classes)
    direction = torch.stack([angle.cos(), angle.sin()], dim=1)
    ends = torch.rand(classes, 2, 3, generator=generator) * 255
    return direction, ends


def make_random(data_cfg, split: str) -> ArrayDataset:
    """The `random` split: num_train or num_test images of image_size, num_classes balanced classes."""
    count = data_cfg.num_train if split == "train" else data_cfg.num_test
    size, classes = data_cfg.image_size, data_cfg.num_classes
    generator = torch.Generator().manual_seed(data_cfg.seed * 2 + (0 if split == "train" else 1))
    direction, ends = _class_styles(classes, torch.Generator().manual_seed(data_cfg.seed))
    labels = torch.randperm(count, generator=generator) % classes
    axis = torch.linspace(-0.5, 0.5, size)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for start in range(0, count, CHUNK):
        chunk = labels[start:start + CHUNK]
        d = direction[chunk]
        # t in [0, 1] along the class direction: (n, size, size, 1)
        t = (d[:, 0, None, None] * axis[None, None, :] + d[:, 1, None, None] * axis[None, :, None]) / math.sqrt(2)
        t = (t + 0.5)[..., None]
        colour = ends[chunk, 0, None, None, :] * (1 - t) + ends[chunk, 1, None, None, :] * t
        noise = torch.randint(-NOISE, NOISE + 1, colour.shape, generator=generator, dtype=torch.int16)
        images[start:start + CHUNK] = (colour.to(torch.int16) + noise).clamp_(0, 255).to(torch.uint8).numpy()
    return ArrayDataset(images=images, labels=labels.numpy(), classes=[f"class{c}" for c in range(classes)])
