"""The index of an ImageFolder split: what start-up knows without decoding a single image.

Every backend needs, before its first step, the list of files, their labels and (DALI, to draw crop
boxes on the host) their sizes. Decoding 1.28 M ImageNet files for that would take hours; reading one
index file and stat-ing each image takes seconds. The first start (or `fastssl data index PATH`)
lists the class folders and reads every image's header (format and size, no pixels) in parallel
processes; later starts list and stat the folders again and read the headers of new files and of
files whose size or mtime changed only. Removed files drop out.

Each file has a status: HEADER (its header parses), DECODED (fully decoded by `fastssl data check`,
a conversion or the tensor backend's load) or BAD (with the reason). A decode pass records what it
found, so a file known to be bad is named or skipped at the next start without being read. Symbolic
links are followed (a folder of links is a normal way to make a subset); an image name that leads to
no file (a dangling link, a loop of links) is listed and BAD, like a file that does not decode.

The index lives outside the data, which may be read-only or shared: `index_path(root)`, under
$FASTSSL_INDEX_DIR, else $XDG_CACHE_HOME/fastssl/index, else ~/.cache/fastssl/index. Deleting it (or
`fastssl data index PATH --rebuild`) rebuilds it. Concurrent starts (one per rank) take a file lock,
so one process builds it and the others read the result.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..atomic import atomic_path
from ..progress import Progress
from .base import DataError
from .files import DECODE_ERRORS, EXTENSIONS, class_dirs, image_entries, open_image, reason

VERSION = 1
HEADER, DECODED, BAD = 0, 1, 2
HEADER_CHUNK = 512          # files per task of the parallel header pass
PARALLEL_MIN = 4096         # header reads: below this a process pool costs more than it saves
PARALLEL_CLASSES = 64       # class folders from which listing and stat-ing is spread over processes
PROGRESS_MIN = 2000         # header passes shorter than this run silently
SEP = "\0"                  # the one character no file name can hold
# Byte size and mtime listed for a name that leads to no file (a dangling link, a loop of links): no real
# file has them, and they stay the same while it stays broken, so the header pass records it BAD once and
# later starts keep that without reading it; once it leads to a file, its real stat differs and is read.
LEADS_NOWHERE = -1

log = logging.getLogger(__name__)


def index_dir() -> Path:
    """Where indexes are kept: $FASTSSL_INDEX_DIR, else the user's cache folder."""
    if os.environ.get("FASTSSL_INDEX_DIR"):
        return Path(os.environ["FASTSSL_INDEX_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fastssl" / "index"


def index_path(root: str | os.PathLike) -> Path:
    """The index file of the split folder `root`: named after its last two path parts (readable) and a
    hash of its absolute path (unique)."""
    resolved = Path(root).resolve()
    digest = hashlib.sha1(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{resolved.parent.name}_{resolved.name}")[-60:]
    return index_dir() / f"{slug}-{digest}.npz"


@dataclass
class Listing:
    """What the folders hold now: classes, files relative to the root ('class/name'), labels, byte
    sizes and modification times."""

    classes: list[str]
    files: list[str]
    labels: np.ndarray
    nbytes: np.ndarray
    mtime_ns: np.ndarray


def _list_class(root_and_name: tuple[str, str]) -> tuple[list[str], np.ndarray]:
    """The image files of one class folder as 'class/name', in code-point name order, with (byte size,
    mtime in ns) through symbolic links; LEADS_NOWHERE for a name that leads to no file."""
    root, name = root_and_name
    names, stats = image_entries(os.path.join(root, name))
    sizes = np.fromiter([LEADS_NOWHERE if st is None else st.st_size for st in stats], np.int64, len(stats))
    mtimes = np.fromiter([LEADS_NOWHERE if st is None else st.st_mtime_ns for st in stats], np.int64, len(stats))
    prefix = name + "/"
    return [prefix + file for file in names], np.stack([sizes, mtimes], 1)


def _pool_map(function, items: list, parallel: bool) -> Iterator:
    """`map` over forked processes on all cores where `parallel`, else in this process; in order.

    Forked: the workers only need os and PIL, and a spawned one would import the whole package again.
    """
    workers = min(os.cpu_count() or 1, len(items))
    if not parallel or workers < 2:
        yield from map(function, items)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(function, items, chunksize=max(1, len(items) // (8 * workers)))


def list_folder(root: Path) -> Listing:
    """List and stat every image file of root/<class>/, in label order then code-point name order;
    class folders are spread over all cores when there are many (stat is most of a second start).

    DataError for a root that is missing, holds no class folder, or has a class folder that leads nowhere
    or holds no image file (dropping it would shift the labels of every later class).
    """
    if not root.exists():
        raise DataError(f"ImageFolder root {str(root)!r}: does not exist")
    if not root.is_dir():
        raise DataError(f"ImageFolder root {str(root)!r}: is not a directory")
    classes = [folder.name for folder in class_dirs(root)]
    if not classes:
        raise DataError(f"ImageFolder root {str(root)!r}: has no class folders "
                        f"(expected root/<class>/<image files>)")
    files: list[str] = []
    labels: list[np.ndarray] = []
    stats: list[np.ndarray] = []
    folders = [(str(root), name) for name in classes]
    for label, (names, stat) in enumerate(_pool_map(_list_class, folders, len(classes) >= PARALLEL_CLASSES)):
        if not names:
            raise DataError(f"class folder {str(root / classes[label])!r}: holds no image files "
                            f"({' '.join(EXTENSIONS)}, sub-folders not searched); an empty class "
                            f"would shift the labels of every later class")
        files += names
        labels.append(np.full(len(names), label, np.int64))
        stats.append(stat)
    stat = np.concatenate(stats)
    return Listing(classes, files, np.concatenate(labels), stat[:, 0].copy(), stat[:, 1].copy())


@dataclass
class FolderIndex:
    """A split folder's files with labels, header sizes and status; positions are the listing's order."""

    root: Path
    listing: Listing
    height: np.ndarray
    width: np.ndarray
    status: np.ndarray                                   # HEADER, DECODED or BAD per file
    reasons: dict[int, str] = field(default_factory=dict)   # position -> why it is BAD
    header_reads: int = 0                                # headers read by the load that made this

    @property
    def classes(self) -> list[str]:
        return self.listing.classes

    @property
    def files(self) -> list[str]:
        return self.listing.files

    @property
    def labels(self) -> np.ndarray:
        return self.listing.labels

    def __len__(self) -> int:
        return len(self.listing.files)

    def bad(self) -> list[tuple[int, str]]:
        """(position, reason) of every file known to be bad, in order."""
        return [(int(i), self.reasons.get(int(i), "unreadable")) for i in np.flatnonzero(self.status == BAD)]

    def record(self, decoded: Sequence[int], failed: Sequence[tuple[int, str]]) -> None:
        """Note a decode pass's outcome: positions that decoded, and (position, reason) of those that did not."""
        self.status[np.asarray(decoded, dtype=np.int64)] = DECODED
        for position, why in failed:
            self.status[position] = BAD
            self.reasons[int(position)] = why

    def save(self) -> None:
        """Write the index (after a decode pass recorded something)."""
        path = index_path(self.root)
        with _locked(path):
            _save(self, path)


def _header(path: str) -> tuple[int, int, str]:
    """(height, width, "") read from a file's header, or (0, 0, reason) when PIL cannot parse it."""
    try:
        with open_image(path) as image:
            width, height = image.size
        return height, width, ""
    except DECODE_ERRORS as e:
        return 0, 0, reason(e)


def _header_chunk(paths: list[str]) -> list[tuple[int, int, str]]:
    return [_header(p) for p in paths]


def read_headers(paths: list[str], progress: Progress | None = None) -> list[tuple[int, int, str]]:
    """Every file's header, in order, over all cores for long lists (header parsing holds the GIL)."""
    chunks = [paths[i:i + HEADER_CHUNK] for i in range(0, len(paths), HEADER_CHUNK)]
    out: list[tuple[int, int, str]] = []
    for chunk in _pool_map(_header_chunk, chunks, len(paths) >= PARALLEL_MIN):
        out += chunk
        if progress is not None:
            progress(len(out), len(paths))
    return out


def load_index(root: str | os.PathLike, rebuild: bool = False,
               progress: Progress | None = None) -> FolderIndex:
    """The index of `root`, brought up to date with the folders and saved when anything changed.

    `progress` hears about header passes of PROGRESS_MIN files or more.
    """
    root = Path(root)
    listing = list_folder(root)
    path = index_path(root)
    with _locked(path):
        index, unchanged = _update(root, listing, None if rebuild else _read(path, root), progress)
        if not unchanged:
            _save(index, path)
    return index


def _update(root: Path, listing: Listing, old: FolderIndex | None,
            progress: Progress | None) -> tuple[FolderIndex, bool]:
    """(index for `listing`, whether `old` already says all of it); headers read where needed."""
    n = len(listing.files)
    height, width = np.zeros(n, np.int64), np.zeros(n, np.int64)
    status, reasons = np.full(n, HEADER, np.int8), {}
    if old is None:
        fresh = np.arange(n)
    else:
        if old.files == listing.files:
            before = np.arange(n)
        else:
            where = {name: i for i, name in enumerate(old.files)}
            before = np.fromiter((where.get(name, -1) for name in listing.files), np.int64, n)
        known = before >= 0
        known[known] = ((old.listing.nbytes[before[known]] == listing.nbytes[known])
                        & (old.listing.mtime_ns[before[known]] == listing.mtime_ns[known]))
        kept, source = np.flatnonzero(known), before[known]
        height[kept], width[kept], status[kept] = old.height[source], old.width[source], old.status[source]
        new_position = np.full(len(old), -1, np.int64)
        new_position[source] = kept
        reasons = {int(new_position[s]): why for s, why in old.reasons.items() if new_position[s] >= 0}
        fresh = np.flatnonzero(~known)
    index = FolderIndex(root, listing, height, width, status, reasons, header_reads=len(fresh))
    if len(fresh):
        shown = progress if len(fresh) >= PROGRESS_MIN else None
        headers = read_headers([os.path.join(root, listing.files[i]) for i in fresh], shown)
        for i, (h, w, why) in zip(fresh, headers):
            height[i], width[i] = h, w
            if why:
                status[i], reasons[int(i)] = BAD, why
    unchanged = old is not None and not len(fresh) and len(old) == n and old.files == listing.files \
        and old.classes == listing.classes
    return index, unchanged


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the index: one process builds it while the others wait, then read it.
    Where no lock can be taken (a read-only cache folder) the index is built in memory, unlocked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")
    except OSError as e:
        log.warning("dataset index %s: cannot lock (%s); set FASTSSL_INDEX_DIR to a writable folder", path, e)
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save(index: FolderIndex, path: Path) -> None:
    """Write the index; a cache that cannot be written costs later starts their header pass, nothing else."""
    try:
        _write(index, path)
    except OSError as e:
        log.warning("dataset index %s: cannot be written (%s); every start reads the headers again "
                    "(set FASTSSL_INDEX_DIR to a writable folder)", path, e)


def _blob(strings: list[str]) -> np.ndarray:
    return np.frombuffer(SEP.join(strings).encode("utf-8", "surrogateescape"), np.uint8)


def _strings(blob: np.ndarray) -> list[str]:
    text = blob.tobytes().decode("utf-8", "surrogateescape")
    return text.split(SEP) if text else []


def _write(index: FolderIndex, path: Path) -> None:
    listing = index.listing
    arrays = {
        "version": np.asarray(VERSION), "root": _blob([str(index.root.resolve())]),
        "classes": _blob(listing.classes), "files": _blob(listing.files), "labels": listing.labels,
        "nbytes": listing.nbytes, "mtime_ns": listing.mtime_ns, "height": index.height, "width": index.width,
        "status": index.status, "reasons": _blob([json.dumps({str(k): v for k, v in index.reasons.items()})]),
    }
    with atomic_path(path) as part, open(part, "wb") as out:
        np.savez(out, **arrays)


def _read(path: Path, root: Path) -> FolderIndex | None:
    """The stored index of `root`, or None when there is none; a damaged or foreign one is rebuilt."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            data = {name: stored[name] for name in stored.files}
        if int(data["version"]) != VERSION or _strings(data["root"]) != [str(root.resolve())]:
            log.warning("dataset index %s: written for another version or folder; rebuilding it", path)
            return None
        listing = Listing(_strings(data["classes"]), _strings(data["files"]), data["labels"], data["nbytes"],
                          data["mtime_ns"])
        reasons = {int(k): v for k, v in json.loads(_strings(data["reasons"])[0]).items()}
        index = FolderIndex(root, listing, data["height"], data["width"], data["status"].copy(), reasons)
        lengths = {len(listing.files), len(listing.labels), len(listing.nbytes), len(listing.mtime_ns),
                   len(index.height), len(index.width), len(index.status)}
        if len(lengths) != 1:
            raise ValueError(f"arrays of lengths {sorted(lengths)}")
        return index
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
        log.warning("dataset index %s: unreadable (%s); rebuilding it", path, e)
        return None
