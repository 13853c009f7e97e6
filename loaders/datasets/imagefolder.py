"""ImageFolder reader: `root/<class>/<image files>`, decoded by PIL, with a raise/skip policy for bad files.

Labels are the index of the class folder in sorted order and files are sorted by name (code-point
order, as torchvision sorts), so every backend and every run sees the same index -> (file, label)
mapping. A file is only known to be bad once it is decoded, so validation happens where decoding does:
`load_pil`, `to_array`, and `check`, which decodes everything once up front to fix the mapping.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DataError

# torchvision's ImageFolder list (torchvision.datasets.folder.IMG_EXTENSIONS), all decodable by PIL: the
# torchvision baseline and the fastssl backends must index a folder alike.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ON_ERROR = ("raise", "skip")
# PIL releases the GIL while decoding and resizing, so threads pay off for real photos (1.6x with 2
# threads on 2 cores at 384 px); for 32 px images Python-side header parsing dominates and they break even.
DECODE_THREADS = min(4, max(2, os.cpu_count() or 2))
CHUNK = 256  # images per thread task: amortises the executor's per-task cost over many small decodes
# Exceptions PIL raises for unreadable, truncated, oversized or non-image files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

log = logging.getLogger(__name__)


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


def decode(path: Path, size: int | None = None) -> Image.Image:
    """Fully decode one file as RGB (optionally bilinear-resized to size x size); PIL errors pass through."""
    with Image.open(path) as image:
        image.load()  # Image.open only parses the header: truncation shows up here
        rgb = to_rgb(image)
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return rgb


def _list_dir(folder: Path) -> list[Path]:
    """Visible entries only: `.DS_Store`, `._x.jpg` (macOS) and `.ipynb_checkpoints` are not data."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def class_dirs(root: Path) -> list[Path]:
    """The class folders of an ImageFolder root, in label order."""
    return [p for p in _list_dir(root) if p.is_dir()]


def capped(names: list[str], limit: int = 10) -> str:
    """A long name list shortened to its first `limit` and a count, so an error stays one readable line."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


_announced: set[Path] = set()   # roots whose `val` stand-in for `test` was already logged


def _split_folder(root: Path, name: str, key: str) -> Path:
    """`root/name`; for the default test split, `root/val` when only that exists (ImageNet's layout)."""
    folder = root / name
    if folder.exists():
        return folder
    if key == "data.test_split" and name == "test" and (root / "val").is_dir():
        if root not in _announced:
            _announced.add(root)
            log.warning("ImageFolder %s: no test/ split, using %s as the test split "
                        "(set data.test_split to choose another)", root, root / "val")
        return root / "val"
    if key == "data.test_split" and name == "test":
        absent = f"neither {str(folder)!r} nor {str(root / 'val')!r} exists"
    else:
        absent = f"{str(folder)!r} does not exist"
    present = [d.name for d in class_dirs(root)]
    holds = f"sub-folders there: {capped(present)}" if present else "it has no sub-folders"
    raise DataError(f"{key}={name!r}: {absent} ({holds}); data.path must hold one folder per split: "
                    f"pick it with --set {key}=NAME")


def split_roots(path: str | os.PathLike, train_split: str, test_split: str) -> dict[str, Path]:
    """{"train": folder, "test": folder} under data.path, checked to hold the same class folders.

    Labels are class-folder positions, so a class missing from one split shifts or drops labels in the
    other and kNN or linear accuracy silently compares the wrong classes. Only folder names are read.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r}: is not an existing directory")
    roots = {"train": _split_folder(root, train_split, "data.train_split"),
             "test": _split_folder(root, test_split, "data.test_split")}
    for folder in roots.values():
        if not folder.is_dir():
            raise DataError(f"ImageFolder root {str(folder)!r}: is not a directory")
    train, test = ([d.name for d in class_dirs(roots[s])] for s in ("train", "test"))
    if train != test:
        in_train, in_test = set(train), set(test)
        missing = [c for c in train if c not in in_test]
        extra = [c for c in test if c not in in_train]
        found = "; ".join(f"{what}: {capped(names)}" for what, names in
                          (("missing from test", missing), ("extra in test", extra)) if names)
        raise DataError(f"test split {str(roots['test'])!r} and train split {str(roots['train'])!r}: must "
                        f"hold the same class folders, as labels are class-folder positions ({found})")
    return roots


class ImageFolderDataset:
    """Labelled images in class sub-folders; implements the ImageDataset protocol.

    Rules (each broken one is a DataError naming the path):
    - `root` must exist and hold at least one class folder; sub-folders of a class are not searched.
    - every class folder must hold at least one image file, under either policy: dropping an empty
      class would silently shift the labels of every later class.
    - a file that does not decode (corrupt, truncated, zero bytes, not an image) raises under
      `on_error="raise"`; under `"skip"` it is dropped from `paths`/`labels` by `check` or `to_array`,
      recorded in `skipped` as (path, reason), and the count is logged once per pass; a class left
      with no decodable file is an error, for the same reason as an empty class folder.
    `load_pil` cannot drop an index mid-epoch, so it raises on a bad file under both policies; with
    `"skip"`, call `check()` before reading images one at a time.
    """

    def __init__(self, root: str | os.PathLike, on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: must be one of {', '.join(ON_ERROR)}")
        self.root = Path(root)
        self.on_error = on_error
        self.skipped: list[tuple[Path, str]] = []
        if not self.root.exists():
            raise DataError(f"ImageFolder root {str(self.root)!r}: does not exist")
        if not self.root.is_dir():
            raise DataError(f"ImageFolder root {str(self.root)!r}: is not a directory")
        folders = class_dirs(self.root)
        if not folders:
            raise DataError(f"ImageFolder root {str(self.root)!r}: has no class folders "
                            f"(expected root/<class>/<image files>)")
        self.classes = [d.name for d in folders]
        self.paths: list[Path] = []
        labels: list[int] = []
        for label, folder in enumerate(folders):
            files = [p for p in _list_dir(folder) if p.suffix.lower() in EXTENSIONS and p.is_file()]
            if not files:
                raise DataError(f"class folder {str(folder)!r}: holds no image files "
                                f"({' '.join(EXTENSIONS)}, sub-folders not searched); an empty class "
                                f"would shift the labels of every later class")
            self.paths += files
            labels += [label] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def load_pil(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            return decode(path)
        except DECODE_ERRORS as e:
            if self.on_error == "skip":
                hint = ("; on_error=skip drops bad files only in check() or to_array(), "
                        "call check() before reading images one by one")
            else:
                hint = " (data.on_error=skip drops and counts such files)"
            raise DataError(f"image file {str(path)!r}: cannot be decoded ({e}){hint}") from e

    def check(self) -> None:
        """Decode every file once and apply the policy now, so the index -> label mapping is final."""
        self._decode_all(None)

    def to_array(self, size: int) -> np.ndarray:
        """Every image as uint8 (N, size, size, 3), bilinear-resized where not already that size."""
        return self._decode_all(size)

    def _decode_all(self, size: int | None) -> np.ndarray | None:
        out = None if size is None else np.empty((len(self.paths), size, size, 3), dtype=np.uint8)

        def decode_chunk(start: int) -> list[tuple[int, str]]:
            failures = []
            for i in range(start, min(start + CHUNK, len(self.paths))):
                try:
                    image = decode(self.paths[i], size)
                except DECODE_ERRORS as e:
                    failures.append((i, f"{type(e).__name__}: {e}"))
                    continue
                if out is not None:
                    out[i] = np.asarray(image)
            return failures

        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            failures = [f for chunk in pool.map(decode_chunk, range(0, len(self.paths), CHUNK)) for f in chunk]
        if not failures:
            return out
        self._apply_policy(failures)
        keep = np.ones(len(self.paths), dtype=bool)
        keep[[i for i, _ in failures]] = False
        emptied = np.flatnonzero(np.bincount(self.labels[keep], minlength=len(self.classes)) == 0)
        if len(emptied):
            folder = self.root / self.classes[emptied[0]]
            raise DataError(f"class folder {str(folder)!r}: none of its files can be decoded "
                            f"(see the warning above); a class without images would be silently missing")
        self.paths = [p for p, k in zip(self.paths, keep) if k]
        self.labels = self.labels[keep]
        return None if out is None else out[keep]

    def _apply_policy(self, failures: list[tuple[int, str]]) -> None:
        """Raise for the first bad file, or record and log all of them (the caller drops them)."""
        first, reason = failures[0]
        if self.on_error == "raise":
            more = f"; {len(failures) - 1} more bad files in {str(self.root)!r}" if len(failures) > 1 else ""
            raise DataError(f"image file {str(self.paths[first])!r}: cannot be decoded ({reason}){more} "
                            f"(data.on_error=skip drops and counts such files)")
        self.skipped += [(self.paths[i], why) for i, why in failures]
        log.warning("ImageFolder %s: skipped %d file(s) that cannot be decoded (first: %s: %s)",
                    self.root, len(failures), self.paths[first], reason)
