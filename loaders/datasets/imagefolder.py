"""ImageFolder reader: `root/<class>/<image files>`, decoded by PIL, with a raise/skip policy for bad files.

Labels are the index of the class folder in sorted order and files are sorted by name (code-point
order, as torchvision sorts), so every backend and every run sees the same index -> (file, label)
mapping. The file list, labels and image sizes come from the folder's index (index.py): start-up
reads headers of new or changed files only and decodes nothing. A file known to be bad (its header
does not parse, or a decode pass found it broken) is settled by the policy at construction; one
whose header parses but whose pixels do not is met where it is decoded, with the same message.

All of that is `IndexedImages`, shared with the unlabelled `images` reader (images.py): the two differ
only in how their source is listed (index.py's kinds) and in how they name it.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..progress import ProgressBar
from .base import DataError
from .files import (DECODE_ERRORS, EXTENSIONS, capped, class_dirs, decode, decode_many, folders_and_broken_links,
                    reason, to_rgb)
from .fingerprint import Fingerprint, files_fingerprint
from .index import BAD, DECODED, FolderIndex, load_index

__all__ = ["DECODE_ERRORS", "EXTENSIONS", "ImageFolderDataset", "IndexedImages", "decode", "split_roots", "to_rgb"]
ON_ERROR = ("raise", "skip")
SUBSTITUTE_TRIES = 64        # files tried in place of a bad one under on_error=skip before giving up

log = logging.getLogger(__name__)


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
    present = [d.name for d in folders_and_broken_links(root)[0]]   # names for the hint, not labels
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


class RootedPaths(Sequence):
    """root / files[i], made on access: building 1.28 M Path objects would cost seconds at every start."""

    def __init__(self, root: Path, files: list[str]):
        self.root, self.files = root, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.root / f for f in self.files[i]]
        return self.root / self.files[i]


class _SharedFlags:
    """One flag per file, in memory shared with the processes forked after it is made.

    Why: the training loader's and the eval batches' DataLoader workers are forked copies of the dataset,
    so a set of warned files in each would name a bad file once per worker that meets it. The test and
    the set are two steps, not one atomic operation: two processes failing on the same file in the same
    instant could both warn, but no process ever warns twice.
    """

    def __init__(self, n: int):
        self._flags = multiprocessing.RawArray(ctypes.c_bool, n)

    def first(self, i: int) -> bool:
        """Whether flag i was still clear; sets it."""
        if self._flags[i]:
            return False
        self._flags[i] = True
        return True


class IndexedImages:
    """Image files read through their index (index.py) with a raise/skip policy for bad files; implements
    the ImageDataset protocol. The base of ImageFolderDataset and ImagesDataset, which pass the `kind` of
    listing (index.py) and set how messages name the source.

    `source` is what is listed as `kind` (a folder, or a list file); `root` is the folder its listed names
    are relative to, `paths[i]` image i's file. A bad file (corrupt, truncated, zero bytes, not an image,
    a name that leads to no file) raises under `on_error="raise"`; under `"skip"` it is dropped from
    `paths`/`labels`/`sizes` where it is known (at construction, from the index; by `check` or
    `to_array`, which decode), recorded in `skipped` as (path, reason), and counted in one warning per
    pass. An index cannot be dropped mid-epoch, so a file found bad while training is replaced by the
    next good one under `"skip"` (`load_usable`); `fastssl data check` records it so the next run leaves
    it out.
    """

    labelled = True
    TITLE = "ImageFolder"                 # how messages name the source
    CHECK = "fastssl data check"          # the command that decodes every file of the source

    def __init__(self, source: str | os.PathLike, on_error: str, kind: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: must be one of {', '.join(ON_ERROR)}")
        self.source = Path(source)
        self.on_error = on_error
        self.skipped: list[tuple[Path, str]] = []
        self.index: FolderIndex = load_index(self.source, kind=kind, progress=ProgressBar(f"indexing {source}"))
        self.root = self.index.root
        self._warned = _SharedFlags(len(self.index))   # by index position: warned once in the run
        self.classes = self.index.classes
        known_bad = self.index.bad()
        if known_bad:
            self._apply_policy([(self.root / self.index.files[i], why) for i, why in known_bad])
        self._keep(np.flatnonzero(self.index.status != BAD))

    def _emptied(self, label: int) -> str:
        """The error for label `label` left without a file that decodes: here, for a source whose files
        all failed (an unlabelled one has label 0 alone)."""
        return f"{self.TITLE} {str(self.source)!r}: none of its files can be decoded (see the warning above)"

    def _keep(self, positions: np.ndarray) -> None:
        """Serve the index's files at `positions` (ascending); a label left without files is an error."""
        index = self.index
        if len(positions) == len(index):
            files = index.files
        else:
            files = [index.files[i] for i in positions]
        emptied = np.flatnonzero(np.bincount(index.labels[positions], minlength=max(1, len(self.classes))) == 0)
        if len(emptied):
            raise DataError(self._emptied(int(emptied[0])))
        self.positions = positions
        self.paths = RootedPaths(self.root, files)
        self.labels = index.labels[positions]
        self.sizes = np.stack([index.height[positions], index.width[positions]], 1)   # (N, 2) heights, widths

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> Fingerprint:
        """The served files' names and sizes, as the index lists them (fingerprint.py): no file is read."""
        return files_fingerprint(self.paths.files, self.index.listing.nbytes[self.positions], self.labels,
                                 self.classes if self.labelled else None)

    def load_pil(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            return decode(path)
        except DECODE_ERRORS as e:
            raise DataError(f"image file {str(path)!r}: cannot be decoded ({reason(e)}) "
                            f"(data.on_error=skip drops and counts such files)") from e

    def load_usable(self, index: int) -> tuple[Image.Image, int]:
        """(image, its index): image `index`, or under on_error=skip the next one that decodes.

        For loaders that cannot drop an index mid-epoch: the batch keeps its size and the returned index
        carries the substitute's label. Each bad file is named once, by whichever process meets it first
        (this one or a DataLoader worker forked from it).
        """
        if self.on_error == "raise":
            return self.load_pil(index), index
        for step in range(SUBSTITUTE_TRIES):
            at = (index + step) % len(self)
            try:
                return self.load_pil(at), at
            except DataError as e:
                if self._warned.first(int(self.positions[at])):
                    log.warning("%s; data.on_error=skip: the next good file takes its place (run `%s %s` to "
                                "record it, so that later runs leave it out)", e, self.CHECK, self.source)
        raise DataError(f"{self.TITLE} {str(self.source)!r}: {SUBSTITUTE_TRIES} files in a row from "
                        f"{str(self.paths[index])!r} cannot be decoded: run `{self.CHECK} {self.source}`")

    def check(self) -> None:
        """Decode every file not yet known to decode, and apply the policy now, so the index -> label
        mapping is final; what it finds is recorded in the index."""
        todo = np.flatnonzero(self.index.status[self.positions] != DECODED)
        self._decode(todo, None)

    def to_array(self, size: int) -> np.ndarray:
        """Every image as uint8 (N, size, size, 3), bilinear-resized where not already that size."""
        return self._decode(np.arange(len(self)), size)

    def _decode(self, rows: np.ndarray, size: int | None) -> np.ndarray | None:
        """Decode the files at `rows` (all of them when `size` asks for the pixels), record the outcome
        in the index, apply the policy to failures."""
        out = None if size is None else np.empty((len(self), size, size, 3), dtype=np.uint8)
        paths = [self.paths[int(r)] for r in rows]
        failures = [(int(rows[i]), why) for i, why in decode_many(paths, size, out)]
        before = self.index.status.copy()
        self.index.record(self.positions[rows], [(self.positions[r], why) for r, why in failures])
        if not np.array_equal(before, self.index.status):
            self.index.save()
        if not failures:
            return out
        self._apply_policy([(self.paths[r], why) for r, why in failures])
        keep = np.ones(len(self), dtype=bool)
        keep[[r for r, _ in failures]] = False
        self._keep(self.positions[keep])
        return None if out is None else out[keep]

    def _apply_policy(self, failures: list[tuple[Path, str]]) -> None:
        """Raise for the first bad file, or record and log all of them (the caller drops them)."""
        first, why = failures[0]
        if self.on_error == "raise":
            more = f"; {len(failures) - 1} more bad files in {str(self.source)!r}" if len(failures) > 1 else ""
            raise DataError(f"image file {str(first)!r}: cannot be decoded ({why}){more} "
                            f"(data.on_error=skip drops and counts such files; `{self.CHECK} "
                            f"{self.source}` lists them all)")
        self.skipped += failures
        log.warning("%s %s: skipped %d file(s) that cannot be decoded (first: %s: %s)",
                    self.TITLE, self.source, len(failures), first, why)


class ImageFolderDataset(IndexedImages):
    """Labelled images in class sub-folders: `root/<class>/<image files>`.

    Rules (each broken one is a DataError naming the path), besides IndexedImages's bad-file policy:
    - `root` must exist and hold at least one class folder; sub-folders of a class are not searched.
    - every class folder must hold at least one image file, under either policy: dropping an empty
      class would silently shift the labels of every later class. A class folder that leads nowhere (a
      dangling symbolic link, a loop of links) is an error for the same reason.
    - under `on_error="skip"`, a class left with no good file is an error, for the same reason as an
      empty class folder.
    """

    def __init__(self, root: str | os.PathLike, on_error: str = "raise"):
        super().__init__(root, on_error, "classes")

    def _emptied(self, label: int) -> str:
        return (f"class folder {str(self.root / self.classes[label])!r}: none of its files can be decoded "
                f"(see the warning above); a class without images would be silently missing")

