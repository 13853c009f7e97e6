"""Image files on disk: which names count as images, which folders as classes, and how a file is decoded.

Shared by the ImageFolder reader, its index and `fastssl data check`, so that all three agree on what
a folder holds and on what "decodes" means.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

# torchvision's ImageFolder list (torchvision.datasets.folder.IMG_EXTENSIONS), all decodable by PIL: the
# torchvision baseline and the fastssl backends must index a folder alike.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Exceptions PIL raises for unreadable, truncated, oversized or non-image files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# PIL releases the GIL while decoding and resizing, so threads pay off for real photos (1.6x with 2
# threads on 2 cores at 384 px); for 32 px images Python-side header parsing dominates and they break even.
DECODE_THREADS = min(4, max(2, os.cpu_count() or 2))
CHUNK = 256  # images per thread task: amortises the executor's per-task cost over many small decodes


_SUFFIXES = frozenset(e[1:] for e in EXTENSIONS)


def is_image_name(name: str) -> bool:
    """A visible name with an image extension (case-insensitive), as the loaders select files."""
    stem, dot, suffix = name.rpartition(".")
    return bool(dot) and not name.startswith(".") and suffix.lower() in _SUFFIXES


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    Grayscale, bilevel, palette and CMYK go through PIL's conversion (CMYK: R = (255-C)(255-K)/255).
    Alpha is dropped, not composited, as torchvision's default loader and DALI's decoder do, so every
    backend sees the same pixels. 16-bit grayscale is rescaled to 8 bits; PIL's own conversion would
    clip everything above 255 to white.
    """
    if image.mode.startswith("I;16"):
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def decode(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Fully decode one file as RGB (optionally bilinear-resized to size x size); PIL errors pass through."""
    with Image.open(path) as image:
        image.load()  # Image.open only parses the header: truncation shows up here
        rgb = to_rgb(image)
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return rgb


def reason(error: BaseException) -> str:
    """How a failed decode is reported everywhere: the exception's type and message."""
    return f"{type(error).__name__}: {error}"


def list_dir(folder: Path) -> list[Path]:
    """Visible entries only: `.DS_Store`, `._x.jpg` (macOS) and `.ipynb_checkpoints` are not data."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def class_dirs(root: Path) -> list[Path]:
    """The class folders of an ImageFolder root, in label order."""
    return [p for p in list_dir(root) if p.is_dir()]


def capped(names: list[str], limit: int = 10) -> str:
    """A long name list shortened to its first `limit` and a count, so an error stays one readable line."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def decode_many(paths: Sequence[str | os.PathLike], size: int | None = None, out: np.ndarray | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[tuple[int, str]]:
    """Decode every file in threads; image i goes to out[i] (resized to size) when `out` is given.

    Returns (position, reason) of the files that fail, in order.
    """
    def decode_chunk(start: int) -> list[tuple[int, str]]:
        failures = []
        for i in range(start, min(start + CHUNK, len(paths))):
            try:
                image = decode(paths[i], size)
            except DECODE_ERRORS as e:
                failures.append((i, reason(e)))
                continue
            if out is not None:
                out[i] = np.asarray(image)
        return failures

    failures: list[tuple[int, str]] = []
    starts = range(0, len(paths), CHUNK)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for start, chunk in zip(starts, pool.map(decode_chunk, starts)):
            failures += chunk
            if progress is not None:
                progress(min(start + CHUNK, len(paths)), len(paths))
    return failures
