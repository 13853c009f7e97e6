"""Omniglot (Lake et al., 2015) for few-shot experiments: every character is a class.

The splits are disjoint sets of alphabets, so the test characters are never seen in training, as the
few-shot protocol requires: alphabets sorted by name, the last ceil(40%) are the test split. Images
stay at their native size (105 x 105) and black strokes on white; backends resize to data.image_size.
`path` is the official .zip (read in place, nothing extracted), an extracted `images_background*`
folder, or the folder holding it.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .base import ArrayDataset, DataError
from .imagefolder import DECODE_ERRORS, to_rgb

ROOT_PREFIX = "images_background"
TEST_FRACTION = 0.4
SPLITS = ("train", "test")
LAYOUT = f"{ROOT_PREFIX}*/<alphabet>/<character>/*.png"


def _is_drawing(parts: tuple[str, ...]) -> bool:
    """root/alphabet/character/file.png, no hidden entry (macOS `.DS_Store`, `._x.png`) on the way."""
    return (len(parts) == 4 and parts[0].startswith(ROOT_PREFIX) and parts[-1].lower().endswith(".png")
            and not any(p.startswith(".") for p in parts))


def _one_root(path: Path, members: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Omniglot ships `images_background` and subsets of it (`_small1`, `_small2`): mixing two would
    count the same characters twice, so exactly one root is allowed."""
    roots = sorted({m[0] for m in members})
    if not roots:
        raise DataError(f"Omniglot data.path {str(path)!r}: holds no {LAYOUT} drawings")
    if len(roots) > 1:
        raise DataError(f"Omniglot data.path {str(path)!r}: holds {', '.join(roots)}; it must hold one "
                        f"{ROOT_PREFIX}* folder (an extracted one can be data.path itself)")
    return members


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[list[tuple[str, ...]], Callable[[tuple[str, ...]], np.ndarray]]]:
    """(drawings as (root, alphabet, character, file), a decoder of one drawing) of a .zip or folder."""
    if not path.exists():
        raise DataError(f"Omniglot data.path {str(path)!r}: does not exist")
    if path.is_dir():
        named = path.name.startswith(ROOT_PREFIX)   # the alphabets' folder itself, or the one above it
        base = path.parent if named else path
        pattern = f"{path.name if named else ROOT_PREFIX + '*'}/*/*/*"
        found = [p.relative_to(base).parts for p in base.glob(pattern)]
        yield _one_root(path, [p for p in found if _is_drawing(p)]), lambda m: _decode(base.joinpath(*m))
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"Omniglot data.path {str(path)!r}: is neither a folder nor a readable .zip ({e})") from e
    with archive:
        names = {PurePosixPath(n).parts: n for n in archive.namelist()}
        members = _one_root(path, [p for p in names if _is_drawing(p)])
        yield members, lambda m: _decode(f"{path}:{names[m]}", lambda: archive.read(names[m]))


def _decode(where: str | Path, read: Callable[[], bytes] | None = None) -> np.ndarray:
    """One drawing as uint8 RGB; `where` names it in errors (and is the file, unless `read` is given)."""
    try:
        raw = read() if read else Path(where).read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            image.load()   # Image.open only parses the header: truncation shows up here
            return np.asarray(to_rgb(image))
    except (zipfile.BadZipFile, *DECODE_ERRORS) as e:   # BadZipFile: a CRC mismatch in the archive
        raise DataError(f"Omniglot image {str(where)!r}: cannot be read or decoded ({e})") from e


def load_omniglot(path: str | os.PathLike, split: str = "train") -> ArrayDataset:
    """A split as uint8 (N, 105, 105, 3); classes `alphabet/characterNN`, labels in sorted class order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    path = Path(path)
    with _open(path) as (members, decode):
        alphabets = sorted({m[1] for m in members})
        num_test = math.ceil(TEST_FRACTION * len(alphabets))
        if len(alphabets) - num_test < 1:
            raise DataError(f"Omniglot data.path {str(path)!r}: holds {len(alphabets)} alphabet(s); the train "
                            f"and test splits are disjoint alphabets, so at least 2 are needed")
        chosen = set(alphabets[-num_test:] if split == "test" else alphabets[:-num_test])
        members = sorted(m for m in members if m[1] in chosen)
        images = [decode(m) for m in members]
    for m, image in zip(members, images):
        if image.shape != images[0].shape:
            raise DataError(f"Omniglot image {'/'.join(m)!r} in {str(path)!r}: is {image.shape[1]}x"
                            f"{image.shape[0]}; every drawing must be the size of the first, "
                            f"{images[0].shape[1]}x{images[0].shape[0]}")
    characters = sorted({m[1:3] for m in members})   # (alphabet, character): "/" must not decide the order
    index = {c: label for label, c in enumerate(characters)}
    labels = np.array([index[m[1:3]] for m in members], dtype=np.int64)
    return ArrayDataset(np.stack(images), labels, [f"{a}/{c}" for a, c in characters])
