"""Validate an ImageFolder up front: `fastssl data check PATH`, and the DALI backend's start-up check.

DALI stops its whole pipeline on the first file it cannot decode, so a bad file must be found before
the pipeline sees it. Each file is decoded fully by PIL with the ImageFolder reader's own `decode`
(stricter than DALI: PIL also rejects truncated JPEGs), so "passes the check" means the same as
"loads under the torchvision backend". The decoded sizes come back too: the DALI backend draws its
crop boxes on the host and needs them.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .datasets.base import DataError
from .datasets.imagefolder import CHUNK, DECODE_ERRORS, DECODE_THREADS, EXTENSIONS, _list_dir, class_dirs, decode

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]   # (files done, files in all)


@dataclass
class Decoded:
    """What decoding every file found: (N, 2) heights and widths (0 where bad), and the bad ones."""

    sizes: np.ndarray
    failures: list[tuple[int, str]]     # (position in the path list, reason)


def decode_all(paths: Sequence[Path], progress: Progress | None = None) -> Decoded:
    """Decode every file in threads (PIL releases the GIL), recording sizes and failures in order."""
    sizes = np.zeros((len(paths), 2), dtype=np.int64)

    def decode_chunk(start: int) -> list[tuple[int, str]]:
        failures = []
        for i in range(start, min(start + CHUNK, len(paths))):
            try:
                width, height = decode(paths[i]).size
            except DECODE_ERRORS as e:
                failures.append((i, f"{type(e).__name__}: {e}"))
                continue
            sizes[i] = height, width
        return failures

    failures: list[tuple[int, str]] = []
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for start, chunk in zip(range(0, len(paths), CHUNK), pool.map(decode_chunk, range(0, len(paths), CHUNK))):
            failures += chunk
            if progress is not None:
                progress(min(start + CHUNK, len(paths)), len(paths))
    return Decoded(sizes, failures)


@dataclass
class Report:
    """The findings of `check_folder`; `ok` when nothing would stop or change a training run."""

    root: Path
    images: int = 0                                               # files that decode
    bad: list[tuple[Path, str]] = field(default_factory=list)     # image files that do not
    non_images: list[Path] = field(default_factory=list)          # files without an image extension
    empty_classes: list[Path] = field(default_factory=list)       # class folders with no image file
    hidden: int = 0                                               # names starting with '.', in root and classes

    @property
    def ok(self) -> bool:
        return not (self.bad or self.empty_classes)

    def lines(self) -> list[str]:
        """One line per finding, then a summary."""
        out = [f"bad image: {p}: {why}" for p, why in self.bad]
        out += [f"empty class folder: {p}: holds no image file ({' '.join(EXTENSIONS)})" for p in self.empty_classes]
        out += [f"not an image (ignored by the loaders): {p}" for p in self.non_images]
        verdict = "ok" if self.ok else "FAILED"
        out.append(f"{self.root}: {verdict}: {self.images} images decode, {len(self.bad)} bad, "
                   f"{len(self.empty_classes)} empty class folders, {len(self.non_images)} non-image files, "
                   f"{self.hidden} hidden files/folders ignored (names starting with '.')")
        return out


def check_folder(root: str | Path, progress: Progress | None = None) -> Report:
    """Decode every image file of `root/<class>/*`; report bad files, empty classes and non-image files.

    A missing root, one without class folders, or a split root (`train/`, `test/` holding class folders)
    is a DataError: there is nothing to check, or the class folders are one level down.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageFolder root {str(root)!r}: is not an existing directory")
    folders = class_dirs(root)
    if not folders:
        raise DataError(f"ImageFolder root {str(root)!r}: has no class folders (expected root/<class>/<files>)")
    _refuse_split_root(root, folders)
    report = Report(root, hidden=_hidden(root))
    paths: list[Path] = []
    for folder in folders:
        report.hidden += _hidden(folder)
        files = [p for p in _list_dir(folder) if p.is_file()]
        images = [p for p in files if p.suffix.lower() in EXTENSIONS]
        report.non_images += [p for p in files if p.suffix.lower() not in EXTENSIONS]
        if not images:
            report.empty_classes.append(folder)
        paths += images
    failures = decode_all(paths, progress).failures
    report.bad = [(paths[i], why) for i, why in failures]
    report.images = len(paths) - len(failures)
    return report


def _hidden(folder: Path) -> int:
    """Entries of `folder` the ImageFolder reader skips for their leading '.' (`.DS_Store`, `._x.jpg`)."""
    return sum(1 for p in folder.iterdir() if p.name.startswith("."))


def _refuse_split_root(root: Path, folders: list[Path]) -> None:
    """A DataError when no folder holds an image file and some hold folders: `root` holds splits.

    Checked as a class root, `train/` and `test/` would each be reported as an empty class folder.
    """
    if any(p.is_file() and p.suffix.lower() in EXTENSIONS for folder in folders for p in _list_dir(folder)):
        return
    splits = [folder for folder in folders if class_dirs(folder)]
    if splits:
        named = ", ".join(f"{f.name}/" for f in splits)
        checks = " and ".join(f"`fastssl data check {f}`" for f in splits)
        raise DataError(f"{str(root)!r} looks like a split root ({named} hold class folders, not image "
                        f"files): run {checks}")


def usable(paths: Sequence[Path], on_error: str, root: Path, backend: str) -> tuple[np.ndarray, Decoded]:
    """Positions of the files a backend that cannot skip may read, and every file's size.

    on_error="raise": a DataError naming the bad files and pointing to `fastssl data check`;
    "skip": the bad files are left out, counted and logged.
    """
    decoded = decode_all(paths)
    keep = np.ones(len(paths), dtype=bool)
    if decoded.failures:
        named = "; ".join(f"{paths[i]} ({why})" for i, why in decoded.failures[:5])
        more = f" and {len(decoded.failures) - 5} more" if len(decoded.failures) > 5 else ""
        if on_error == "raise":
            raise DataError(f"{len(decoded.failures)} file(s) cannot be decoded: {named}{more}. The {backend} "
                            f"backend stops on a bad file rather than skipping it: run `fastssl data check "
                            f"{root}` to list them all, then remove them or set data.on_error=skip")
        log.warning("%s backend: skipped %d file(s) that cannot be decoded: %s%s",
                    backend, len(decoded.failures), named, more)
        keep[[i for i, _ in decoded.failures]] = False
    return np.flatnonzero(keep), decoded
