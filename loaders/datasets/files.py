"""Image files on disk: which names count as images, which folders as classes, and how a file is decoded.

Shared by the ImageFolder reader, its index and `fastssl data check`, so that all three agree on what
a folder holds and on what "decodes" means.
"""
from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .base import DataError

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
_NAME = attrgetter("name")


def is_image_name(name: str) -> bool:
    """A visible name with an image extension (case-insensitive), as the loaders select files."""
    stem, dot, suffix = name.rpartition(".")
    return bool(dot) and not name.startswith(".") and suffix.lower() in _SUFFIXES


def image_entries(folder: str | os.PathLike) -> tuple[list[str], list[os.stat_result | None]]:
    """The image files of a class folder, in code-point name order, and their stats through symbolic
    links (a changed target is a changed file). A link that leads to no file (dangling, a loop of links)
    comes with None: a bad image to name, not an absent one to pass over.

    One stat per file, as any listing with sizes needs (lstat for a file, stat for a link): the listing's
    file types tell files from links, and plain files go straight to C (a Python call per file would add
    a tenth to the 2.4 us per file of bench/results/startup_cpu.md).
    """
    with os.scandir(folder) as entries:
        images = sorted((e for e in entries if is_image_name(e.name)
                         and (_file_or_nowhere(e) if e.is_symlink() else e.is_file())), key=_NAME)
    return [e.name for e in images], [_followed_stat(e) if e.is_symlink() else e.stat() for e in images]


def _file_or_nowhere(link: os.DirEntry) -> bool:
    """Whether a symbolic link leads to a file or to nothing (not to a folder)."""
    info = _followed_stat(link)
    return info is None or stat.S_ISREG(info.st_mode)


def _followed_stat(entry: os.DirEntry) -> os.stat_result | None:
    """The entry's stat through symbolic links; None where they lead to no file."""
    try:
        return entry.stat()
    except OSError:
        return None


class BrokenLinkError(OSError):
    """A symbolic link that leads to no file; PIL's own error would only say "No such file or directory"
    of a name that `ls` lists."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """PIL's Image.open (the header only), a symbolic link that leads nowhere raised as BrokenLinkError."""
    try:
        return Image.open(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP) and os.path.islink(path):
            raise BrokenLinkError(_link_trouble(path, e.errno)) from e
        raise


def _link_trouble(path: str | os.PathLike, code: int) -> str:
    """What is wrong with a link, in words: its errno alone reads as a missing file."""
    if code == errno.ELOOP:
        return f"symbolic link loop (too many levels of symbolic links through {os.readlink(path)!r})"
    return f"dangling symbolic link (its target {os.path.realpath(path)!r} does not exist)"


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
    with open_image(path) as image:
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


def folders_and_broken_links(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The visible folders of `root` (symbolic links followed) in code-point name order, and its visible
    symbolic links that lead nowhere (dangling, a loop of links) with what is wrong: in an ImageFolder
    root each of these may be a class folder, so none can be passed over as "not a folder"."""
    folders, broken = [], []
    for path in list_dir(root):
        if path.is_dir():
            folders.append(path)
        elif path.is_symlink() and (trouble := _leads_nowhere(path)):
            broken.append((path, trouble))
    return folders, broken


def _leads_nowhere(link: Path) -> str | None:
    """What is wrong with a symbolic link that `stat` cannot follow; None where it leads somewhere."""
    try:
        link.stat()
    except OSError as e:
        return _link_trouble(link, e.errno)
    return None


def class_dirs(root: Path) -> list[Path]:
    """The class folders of an ImageFolder root, in label order. A symbolic link there that leads nowhere
    is a DataError, whatever data.on_error says: labels are class-folder positions, so leaving one out
    would give every later class another label (and compare the wrong classes across splits)."""
    folders, broken = folders_and_broken_links(root)
    if broken:
        path, trouble = broken[0]
        raise DataError(f"class folder {str(path)!r}: {trouble}; a class folder cannot be skipped, whatever "
                        f"data.on_error says: leaving it out would silently shift the labels of every later class")
    return folders


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
