"""A data-free JPEG ImageFolder at photo sizes, written at run time: for decoder benchmarks and tests.

A JPEG decoder's speed depends on what it decodes: full-size photographs (ImageNet's average is
about 400 x 350 px, 110 KB) cost far more than CIFAR thumbnails, and noise costs more than photos.
A GPU machine has no dataset and no network, so this writes one: scikit-image's bundled sample
photographs where scikit-image is installed (it ships them inside its wheel), otherwise drawn
scenes (smooth gradients, discs and a little texture, so they compress like photos rather than
like noise). Each file is its own random crop (30-100% of the area), flip and JPEG quality
(75-95) of a source, at full resolution, so no two files are the same bytes. Deterministic in the seed.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# scikit-image's bundled colour photographs (functions of skimage.data), all at least 300 px a side
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
DRAWN_SIZE = (375, 500)          # (height, width): ImageNet's typical landscape photo
WRITE_THREADS = 4                # PIL releases the GIL while encoding


@dataclass
class PhotoSet:
    root: Path
    source: str                  # "scikit-image" or "drawn"
    files: int
    bytes: int


def _skimage_photos() -> list[np.ndarray] | None:
    try:
        from skimage import data
    except ImportError:
        return None
    photos = []
    for name in SKIMAGE_PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 3 and image.shape[2] >= 3:
            photos.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return photos or None


def _drawn_photo(rng: np.random.Generator) -> np.ndarray:
    """A smooth scene: a two-colour gradient sky, a few soft discs, faint texture."""
    h, w = DRAWN_SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = top + (bottom - top) * (y / h)[..., None]
    for _ in range(rng.integers(3, 7)):
        cy, cx, radius = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 150)
        weight = np.clip(1.5 - np.hypot(y - cy, x - cx) / radius, 0, 1)[..., None]
        image = image * (1 - weight) + rng.uniform(0, 255, 3).astype(np.float32) * weight
    image += rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _variant(source: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A random crop (30-100% of the area, aspect 3/4..4/3) and flip of a source, and a JPEG quality."""
    h, w = source.shape[:2]
    area = rng.uniform(0.3, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, max(16, round(np.sqrt(area / aspect)))))
    cw = int(min(w, max(16, round(np.sqrt(area * aspect)))))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = source[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(crop)), int(rng.integers(75, 96))


def write_photo_folder(root: str | Path, train: int, test: int = 0, classes: int = 10, seed: int = 0) -> PhotoSet:
    """root/train/classK/NNNNNN.jpg (and root/test/... when test > 0), classes balanced round-robin.

    Refuses a root that already holds files: it never overwrites someone's data.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: not empty; the photo set is written into a new or empty folder")
    if train < 1 or test < 0 or classes < 1:
        raise ValueError(f"train={train}, test={test}, classes={classes}: need train >= 1, test >= 0, classes >= 1")
    rng = np.random.default_rng(seed)
    photos = _skimage_photos()
    source = "scikit-image" if photos else "drawn"
    sources = photos or [_drawn_photo(rng) for _ in range(8)]
    jobs = []
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            label = i % classes
            path = root / split / f"class{label:03d}" / f"{i:06d}.jpg"
            src = sources[int(rng.integers(len(sources)))]
            jobs.append((path, src, np.random.default_rng([seed, i, split == "test"])))
    for folder in {path.parent for path, _, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(job) -> int:
        path, src, job_rng = job
        image, quality = _variant(src, job_rng)
        image.save(path, format="JPEG", quality=quality)
        return path.stat().st_size

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        sizes = list(pool.map(write, jobs))
    return PhotoSet(root, source, len(jobs), sum(sizes))
