"""CIFAR-10 / CIFAR-100 from the official python-pickle batches (the layout torchvision also reads).

Nothing is fetched unless asked (`download=True`, i.e. `data.download=true`): a typo in `data.path`
must not start a 170 MB download. A download is checked against the official md5 before extraction.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .base import ArrayDataset, DataError

SIDE = 32
TIMEOUT_S = 60
SPLITS = ("train", "test")


@dataclass(frozen=True)
class CifarSpec:
    url: str
    md5: str
    folder: str                        # what the archive extracts to, under root
    batches: dict[str, tuple[str, ...]]  # split -> batch files
    meta: str
    names_key: str                     # class names in the meta file
    labels_key: str                    # labels in a batch file


SPECS = {
    "cifar10": CifarSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        batches={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta", names_key="label_names", labels_key="labels"),
    "cifar100": CifarSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        batches={"train": ("train",), "test": ("test",)},
        meta="meta", names_key="fine_label_names", labels_key="fine_labels"),
}


def _numpy_globals() -> dict[str, object]:
    """The callables numpy's own pickles name (found by asking numpy, so any numpy version works)."""
    arr = np.zeros(1)
    found = (arr.__reduce__()[0], arr.__reduce_ex__(5)[0], np.int64(0).__reduce__()[0], np.ndarray, np.dtype)
    return {f.__name__: f for f in found}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickling a global can run arbitrary code; CIFAR batches need only numpy arrays (and, in
    protocol-2 pickles written by Python 3, `_codecs.encode` for bytes), so every other global is refused."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self.allowed:
            return self.allowed[name]
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # latin1: the official files are Python 2 pickles, and numpy needs latin1 to restore their arrays
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise DataError(f"CIFAR file {str(path)!r}: cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {str(path)!r}: must hold a dict, holds {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(obj: dict, key: str, path: Path):
    if key not in obj:
        raise DataError(f"CIFAR file {str(path)!r}: has no {key!r} entry (keys: {', '.join(map(str, obj))})")
    return obj[key]


def _read_batch(path: Path, labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (n, 3*32*32) rows in CHW order, int64 labels), validated."""
    obj = _unpickle(path)
    data = np.asarray(_field(obj, "data", path))
    labels = np.asarray(_field(obj, labels_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(f"CIFAR file {str(path)!r}: 'data' must be uint8 (n, {3 * SIDE * SIDE}), "
                        f"is {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"CIFAR file {str(path)!r}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR file {str(path)!r}: labels must be in [0, {num_classes}), "
                        f"found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Extract only plain files and folders under `folder/`: no links, devices or paths escaping root."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            parts = PurePosixPath(m.name).parts
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts or parts[:1] != (folder,):
                raise DataError(f"archive {str(archive)!r}: member {m.name!r} is not a plain file or folder "
                                f"under {folder}/; nothing was extracted")
        # `filter` exists from Python 3.10.12 / 3.11.4; older versions rely on the check above
        tar.extractall(root, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def fetch_archive(spec: CifarSpec, root: Path) -> None:
    """Fetch the official archive into root, verify its md5, extract it, delete the archive."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / (PurePosixPath(spec.url).name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        try:
            with urllib.request.urlopen(spec.url, timeout=TIMEOUT_S) as response, open(archive, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as e:  # URLError, timeouts and disk errors are all OSErrors
            raise DataError(f"downloading {spec.url} into {str(root)!r}: failed ({e}); fetch and extract "
                            f"it by hand, then set data.download=false") from e
        if digest.hexdigest() != spec.md5:
            raise DataError(f"downloaded {spec.url}: md5 {digest.hexdigest()} is not the official "
                            f"{spec.md5} (corrupt or altered download); nothing was extracted")
        _extract(archive, root, spec.folder)
    finally:
        archive.unlink(missing_ok=True)


def load_cifar(root: str | os.PathLike, name: str = "cifar10", split: str = "train",
               download: bool = False) -> ArrayDataset:
    """A CIFAR split as uint8 (N, 32, 32, 3) HWC.

    `root` holds the extracted folder (`cifar-10-batches-py` / `cifar-100-python`) or is that folder.
    CIFAR-100 uses its 100 fine labels.
    """
    if name not in SPECS:
        raise ValueError(f"name={name!r}: must be one of {', '.join(SPECS)}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    spec, root = SPECS[name], Path(root)
    folder = root if root.name == spec.folder else root / spec.folder
    needed = [folder / f for f in (spec.meta, *spec.batches[split])]
    missing = [p.name for p in needed if not p.is_file()]
    if missing and not download:
        raise DataError(f"{name} not found: {str(folder)!r} lacks {', '.join(missing)}; "
                        f"data.download=true fetches it from {spec.url}")
    if missing:
        fetch_archive(spec, folder.parent)
        still = [p.name for p in needed if not p.is_file()]
        if still:
            raise DataError(f"{spec.url}: the archive did not contain {', '.join(still)} under {spec.folder}/")
    meta = _unpickle(folder / spec.meta)
    classes = [str(c) for c in _field(meta, spec.names_key, folder / spec.meta)]
    parts = [_read_batch(folder / f, spec.labels_key, len(classes)) for f in spec.batches[split]]
    rows = np.concatenate([d for d, _ in parts])
    images = np.ascontiguousarray(rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return ArrayDataset(images, np.concatenate([l for _, l in parts]), classes)
