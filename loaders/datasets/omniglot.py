"""Omniglot (Lake et al., 2015) for few-shot experiments: every character is a class.

Train and test characters never overlap, as the few-shot protocol requires. Given the official pair
`images_background*` (train) and `images_evaluation` (test), as one .zip, two .zips or two folders
inside `path`, the splits are those sets, as the Omniglot literature uses them. Given one of them alone,
its alphabets sorted by name are split: the last ceil(40%) are the test split. Images stay at their
native size (105 x 105) and black strokes on white; backends resize to data.image_size.
`path` is a .zip (read in place, nothing extracted), an extracted set's folder, or the folder holding
the sets. `load_oneshot_runs` reads the paper's 20 one-shot classification runs (all_runs.zip).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, ClassVar, Iterator

import numpy as np
from PIL import Image

from .base import ArrayDataset, DataError
from .imagefolder import DECODE_ERRORS, to_rgb

BACKGROUND = "images_background"   # the full set and its subsets `_small1`, `_small2`
EVALUATION = "images_evaluation"
ROOT_PREFIXES = (BACKGROUND, EVALUATION)
TEST_FRACTION = 0.4
SPLITS = ("train", "test")
LAYOUT = f"{BACKGROUND}*|{EVALUATION}/<alphabet>/<character>/*.png"

Decoder = Callable[[tuple[str, ...]], np.ndarray]


class OmniglotSplit(ArrayDataset):
    """A split whose classes never occur in the other split: a train-vs-test kNN score means nothing."""
    disjoint_classes: ClassVar[bool] = True


def _is_drawing(parts: tuple[str, ...]) -> bool:
    """root/alphabet/character/file.png, no hidden entry (macOS `.DS_Store`, `._x.png`) on the way."""
    return (len(parts) == 4 and parts[0].startswith(ROOT_PREFIXES) and parts[-1].lower().endswith(".png")
            and not any(p.startswith(".") for p in parts))


def _pick_roots(path: Path, roots: list[str]) -> tuple[str, str | None]:
    """(train root, test root or None for the alphabet hold-out). A background set and its subsets
    share characters, so two background sets (or two sources of one) would count them twice."""
    if not roots:
        raise DataError(f"Omniglot data.path {str(path)!r}: holds no {LAYOUT} drawings")
    background = sorted(r for r in roots if r.startswith(BACKGROUND))
    evaluation = sorted(r for r in roots if r.startswith(EVALUATION))
    for found in (background, evaluation):
        if len(found) > 1:
            raise DataError(f"Omniglot data.path {str(path)!r}: holds {', '.join(found)}; it must hold one "
                            f"{found[0].split('_small')[0]}* set (put the pair you want in a folder of its own)")
    if background and evaluation:
        return background[0], evaluation[0]
    return roots[0], None


def _folder(base: Path, pattern: str) -> tuple[list[tuple[str, ...]], Decoder]:
    found = [p.relative_to(base).parts for p in base.glob(pattern)]
    return [p for p in found if _is_drawing(p)], lambda m: _decode(base.joinpath(*m))


def _zip(path: Path, stack: contextlib.ExitStack) -> tuple[list[tuple[str, ...]], Decoder]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"Omniglot data.path {str(path)!r}: is neither a folder nor a readable .zip ({e})") from e
    names = {PurePosixPath(n).parts: n for n in archive.namelist()}
    return ([p for p in names if _is_drawing(p)],
            lambda m: _decode(f"{path}:{names[m]}", lambda: archive.read(names[m])))


@contextlib.contextmanager
def _open(path: Path) -> Iterator[dict[str, tuple[list[tuple[str, ...]], Decoder]]]:
    """root -> (its drawings as (root, alphabet, character, file), their decoder), from a .zip, a set's
    folder, or a folder holding sets as folders or .zips."""
    if not path.exists():
        raise DataError(f"Omniglot data.path {str(path)!r}: does not exist")
    with contextlib.ExitStack() as stack:
        if path.is_dir() and path.name.startswith(ROOT_PREFIXES):   # an extracted set itself
            sources = [_folder(path.parent, f"{path.name}/*/*/*")]
        elif path.is_dir():
            sources = [_folder(path, f"{prefix}*/*/*/*") for prefix in ROOT_PREFIXES]
            sources += [_zip(z, stack) for z in sorted(path.glob("*.zip")) if z.name.startswith(ROOT_PREFIXES)]
        else:
            sources = [_zip(path, stack)]
        roots: dict[str, tuple[list[tuple[str, ...]], Decoder]] = {}
        for members, decode in sources:
            for root in sorted({m[0] for m in members}):
                if root in roots:
                    raise DataError(f"Omniglot data.path {str(path)!r}: holds {root} twice (a folder and a "
                                    f".zip?); keep one")
                roots[root] = ([m for m in members if m[0] == root], decode)
        yield roots


def _decode(where: str | Path, read: Callable[[], bytes] | None = None) -> np.ndarray:
    """One drawing as uint8 RGB; `where` names it in errors (and is the file, unless `read` is given)."""
    try:
        raw = read() if read else Path(where).read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            image.load()   # Image.open only parses the header: truncation shows up here
            return np.asarray(to_rgb(image))
    except (zipfile.BadZipFile, *DECODE_ERRORS) as e:   # BadZipFile: a CRC mismatch in the archive
        raise DataError(f"Omniglot image {str(where)!r}: cannot be read or decoded ({e})") from e


def _same_size(path: Path, names: list[str], images: list[np.ndarray]) -> np.ndarray:
    """The drawings stacked; a DataError naming the first one whose size differs from the first's."""
    for name, image in zip(names, images):
        if image.shape != images[0].shape:
            raise DataError(f"Omniglot image {name!r} in {str(path)!r}: is {image.shape[1]}x{image.shape[0]}; "
                            f"every drawing must be the size of the first, {images[0].shape[1]}x{images[0].shape[0]}")
    return np.stack(images)


def load_omniglot(path: str | os.PathLike, split: str = "train") -> OmniglotSplit:
    """A split as uint8 (N, 105, 105, 3); classes `alphabet/characterNN`, labels in sorted class order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    path = Path(path)
    with _open(path) as roots:
        train_root, test_root = _pick_roots(path, sorted(roots))
        members, decode = roots[test_root if split == "test" and test_root else train_root]
        if test_root is None:
            alphabets = sorted({m[1] for m in members})
            num_test = math.ceil(TEST_FRACTION * len(alphabets))
            if len(alphabets) - num_test < 1:
                raise DataError(f"Omniglot data.path {str(path)!r}: holds {len(alphabets)} alphabet(s); the "
                                f"train and test splits are disjoint alphabets, so at least 2 are needed")
            chosen = set(alphabets[-num_test:] if split == "test" else alphabets[:-num_test])
            members = [m for m in members if m[1] in chosen]
        members = sorted(members)
        images = _same_size(path, ["/".join(m) for m in members], [decode(m) for m in members])
    characters = sorted({m[1:3] for m in members})   # (alphabet, character): "/" must not decide the order
    index = {c: label for label, c in enumerate(characters)}
    labels = np.array([index[m[1:3]] for m in members], dtype=np.int64)
    return OmniglotSplit(images, labels, [f"{a}/{c}" for a, c in characters])


@dataclass
class OneShotRun:
    """One of the paper's classification runs: each test drawing belongs to one training drawing's class."""
    name: str             # runNN
    training: np.ndarray  # (C, H, W, 3) uint8, one drawing per class, in file-name order
    test: np.ndarray      # (Q, H, W, 3) uint8, in file-name order
    truth: np.ndarray     # (Q,) int64: the index in `training` of each test drawing's class


@contextlib.contextmanager
def _files(path: Path) -> Iterator[dict[tuple[str, ...], tuple[str, Callable[[], bytes]]]]:
    """relative path parts -> (name for errors, reader) of every file in a folder or .zip."""
    if not path.exists():
        raise DataError(f"Omniglot runs {str(path)!r}: do not exist")
    if path.is_dir():
        yield {p.relative_to(path).parts: (str(p), p.read_bytes) for p in path.rglob("*") if p.is_file()}
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"Omniglot runs {str(path)!r}: are neither a folder nor a readable .zip ({e})") from e
    with archive:
        yield {PurePosixPath(n).parts: (f"{path}:{n}", lambda n=n: archive.read(n))
               for n in archive.namelist() if not n.endswith("/")}


def load_oneshot_runs(path: str | os.PathLike) -> list[OneShotRun]:
    """The runs of all_runs.zip (or its extracted folder): `runNN/training/*.png`, `runNN/test/*.png` and
    `runNN/class_labels.txt`, whose lines `runNN/test/X.png runNN/training/Y.png` (relative to the
    runs' folder) give each test drawing's class."""
    path = Path(path)
    runs = []
    with _files(path) as files:
        labels = sorted(p for p in files if len(p) > 1 and p[-1] == "class_labels.txt"
                        and re.fullmatch(r"run\d+", p[-2]))
        if not labels:
            raise DataError(f"Omniglot runs {str(path)!r}: hold no runNN/class_labels.txt")
        for label_file in labels:
            base, run = label_file[:-2], label_file[-2]
            where, read = files[label_file]
            training = sorted(p for p in files if p[:-1] == (*base, run, "training")
                              and p[-1].lower().endswith(".png") and not p[-1].startswith("."))
            pairs = []
            for number, line in enumerate(read().decode("utf-8", "replace").splitlines(), 1):
                if not line.strip():
                    continue
                fields = [base + PurePosixPath(f).parts for f in line.split()]
                test, train = fields if len(fields) == 2 else ((), ())
                if test not in files or train not in training:
                    raise DataError(f"Omniglot runs {where!r} line {number}: {line.strip()!r} must name a test "
                                    f"drawing and a drawing of {run}/training/ that exist")
                pairs.append((test, training.index(train)))
            if not pairs:
                raise DataError(f"Omniglot runs {where!r}: lists no test drawing")
            pairs.sort()
            names = ["/".join(p) for p in training + [t for t, _ in pairs]]
            images = _same_size(path, names, [_decode(*files[p]) for p in training + [t for t, _ in pairs]])
            runs.append(OneShotRun(run, images[:len(training)], images[len(training):],
                                   np.array([i for _, i in pairs], dtype=np.int64)))
    return runs
