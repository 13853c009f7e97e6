"""The index of an ImageFolder split or an `images` source: what start-up knows without decoding a single image.

Every backend needs, before its first step, the list of files, their labels and (DALI, to draw crop
boxes on the host) their sizes. Decoding 1.28 M ImageNet files for that would take hours; reading one
index file and stat-ing each image takes seconds. The first start (or `fastssl data index PATH`)
lists the files and reads every image's header (format and size, no pixels) in parallel processes;
later starts list and stat the files again and read the headers of new files and of files whose size
or mtime changed only. Removed files drop out.

A source is listed one of three ways (its `kind`), and only the listing differs: "classes", an
ImageFolder split (root/<class>/<image files>, labels from the class folders); "nested", the image
files of a folder at any depth, unlabelled; "list", the image paths a .txt file names, unlabelled.
The kind is part of the index's key and of what it stores, so one folder read both ways has two
indexes and neither is ever read as the other.

Each file has a status: HEADER (its header parses), DECODED (fully decoded by `fastssl data check`,
a conversion or the tensor backend's load) or BAD (with the reason). A decode pass records what it
found, so a file known to be bad is named or skipped at the next start without being read. Symbolic
links are followed (a folder of links is a normal way to make a subset); an image name that leads to
no file (a dangling link, a loop of links) is listed and BAD, like a file that does not decode.

The index lives outside the data, which may be read-only or shared: `index_path(path, kind)`, under
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
from stat import S_ISREG
from typing import Callable, Iterator, Sequence

import numpy as np

from ..atomic import atomic_path
from ..progress import Progress
from ..settings import IMAGES_PATH_RULE, images_kind
from .base import DataError
from .files import DECODE_ERRORS, EXTENSIONS, class_dirs, image_entries, open_image, reason

VERSION = 1
HEADER, DECODED, BAD = 0, 1, 2
HEADER_CHUNK = 512          # files per task of the parallel header pass (and of a list file's stat pass)
PARALLEL_MIN = 4096         # header reads, list-file stats: below this a process pool costs more than it saves
PARALLEL_FOLDERS = 64       # folders from which listing and stat-ing is spread over processes
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


def index_path(path: str | os.PathLike, kind: str = "classes") -> Path:
    """The index file of `path` listed as `kind`: named after its last two path parts and its kind
    (readable) and a hash of both (unique). An ImageFolder's ("classes") name and hash leave the kind out,
    as they did before kinds existed, so the indexes users already have stay valid."""
    resolved = Path(path).resolve()
    key, tail = (str(resolved), "") if kind == "classes" else (f"{kind}{SEP}{resolved}", f"-{kind}")
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{resolved.parent.name}_{resolved.name}")[-60:]
    return index_dir() / f"{slug}{tail}-{digest}.npz"


@dataclass
class Listing:
    """What the folders hold now: classes, files relative to the root ('class/name'), labels, byte
    sizes and modification times."""

    classes: list[str]
    files: list[str]
    labels: np.ndarray
    nbytes: np.ndarray
    mtime_ns: np.ndarray


def _stat_rows(stats: Sequence[os.stat_result | None]) -> np.ndarray:
    """(N, 2) int64 of (byte size, mtime in ns); LEADS_NOWHERE for a name that leads to no file (None)."""
    sizes = np.fromiter([LEADS_NOWHERE if st is None else st.st_size for st in stats], np.int64, len(stats))
    mtimes = np.fromiter([LEADS_NOWHERE if st is None else st.st_mtime_ns for st in stats], np.int64, len(stats))
    return np.stack([sizes, mtimes], 1)


def _list_images(root_and_folder: tuple[str, str]) -> tuple[list[str], np.ndarray]:
    """The image files of one folder (a class folder, or a folder of a nested tree; '' for the root) as
    'folder/name', in code-point name order, with their _stat_rows through symbolic links."""
    root, folder = root_and_folder
    names, stats = image_entries(os.path.join(root, folder))
    prefix = folder + "/" if folder else ""
    return [prefix + file for file in names], _stat_rows(stats)


def _chunks(paths: list[str]) -> list[list[str]]:
    """`paths` in tasks of HEADER_CHUNK for _pool_map: one task per file would cost more than the file."""
    return [paths[i:i + HEADER_CHUNK] for i in range(0, len(paths), HEADER_CHUNK)]


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
    """List and stat every image file of root/<class>/, in label order then code-point name order.

    DataError for a root that is missing, holds no class folder, or has a class folder that leads nowhere
    or holds no image file (dropping it would shift the labels of every later class).
    """
    _require_folder(root, "ImageFolder root")
    classes = [folder.name for folder in class_dirs(root)]
    if not classes:
        raise DataError(f"ImageFolder root {str(root)!r}: has no class folders "
                        f"(expected root/<class>/<image files>)")
    files: list[str] = []
    labels: list[np.ndarray] = []
    stats: list[np.ndarray] = []
    for label, (names, stat) in enumerate(_list_folders(root, classes)):
        if not names:
            raise DataError(f"class folder {str(root / classes[label])!r}: holds no image files "
                            f"({' '.join(EXTENSIONS)}, sub-folders not searched); an empty class "
                            f"would shift the labels of every later class")
        files += names
        labels.append(np.full(len(names), label, np.int64))
        stats.append(stat)
    stat = np.concatenate(stats)
    return Listing(classes, files, np.concatenate(labels), stat[:, 0].copy(), stat[:, 1].copy())


def _list_folders(root: Path, folders: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """_list_images of each folder under `root`, in order; spread over all cores when there are many
    (stat is most of a second start)."""
    return _pool_map(_list_images, [(str(root), f) for f in folders], len(folders) >= PARALLEL_FOLDERS)


def nested_folders(root: Path) -> list[str]:
    """`root` ('') and every visible folder under it at any depth, as paths relative to it ('a', 'a/b').

    Symbolic links are followed, and each real folder (device and inode) is entered once, at the first
    path a depth-first walk in name order meets it: a link loop (a link to a folder above it) ends there
    instead of recursing forever, and two links to one folder do not list its files twice. A link that
    leads nowhere holds no files, so it is passed over: without labels, nothing shifts.
    """
    seen = {_identity(os.stat(root))}
    found, todo = [], [""]
    while todo:
        folder = todo.pop()
        found.append(folder)
        for entry in reversed(_subfolders(os.path.join(root, folder))):   # popped in name order
            key = _identity(entry.stat())
            if key not in seen:
                seen.add(key)
                todo.append(f"{folder}/{entry.name}" if folder else entry.name)
    return found


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _subfolders(folder: str) -> list[os.DirEntry]:
    """The visible folders of `folder` (through symbolic links), in code-point name order. A folder that
    cannot be read (`lost+found` on a disk's root) is a DataError: passing over it would silently train
    on part of the data."""
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"images folder {folder!r}: cannot be listed ({reason(e)})") from e


def list_nested(root: Path) -> Listing:
    """List and stat every image file under `root` at any depth (`nested_folders`), unlabelled; names
    starting with '.' are skipped, as in an ImageFolder. DataError for a root that is missing, not a
    folder, or holds no image file."""
    _require_folder(root, "images folder")
    files: list[str] = []
    stats: list[np.ndarray] = []
    for names, stat in _list_folders(root, nested_folders(root)):
        files += names
        stats.append(stat)
    if not files:
        raise DataError(f"images folder {str(root)!r}: holds no image files ({' '.join(EXTENSIONS)}, searched "
                        f"at any depth; names starting with '.' are skipped)")
    return _unlabelled(files, np.concatenate(stats))


def list_file(path: Path) -> Listing:
    """Stat every image path the text file `path` names, one per line, unlabelled.

    Relative paths are relative to the file's folder; leading and trailing white space is not part of
    a path; blank lines and lines starting with '#' are skipped. Every listed path is kept, whatever its
    extension: a path that names no image file (missing, a folder, not an image) is a bad file, which
    data.on_error settles like any other. DataError for a file that cannot be read, lists nothing, or
    lists one path twice (its index position would be ambiguous).
    """
    names = _listed(path)
    if not names:
        raise DataError(f"images list {str(path)!r}: holds no image files (one path per line; blank lines and "
                        f"lines starting with '#' are skipped)")
    paths = [os.path.join(path.parent, name) for name in names]
    stats = np.concatenate(list(_pool_map(_stat_chunk, _chunks(paths), len(paths) >= PARALLEL_MIN)))
    return _unlabelled(names, stats)


def _listed(path: Path) -> list[str]:
    """The paths a list file names, in file order; file names need not be UTF-8 (surrogate escapes)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as text:
            lines = [line.strip() for line in text]
    except OSError as e:
        raise DataError(f"images list {str(path)!r}: cannot be read ({reason(e)})") from e
    first: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if line and not line.startswith("#"):
            if line in first:
                raise DataError(f"images list {str(path)!r}: line {number} lists {line!r} again (first on line "
                                f"{first[line]}); each image may be listed once")
            first[line] = number
    return list(first)


def _stat_chunk(paths: list[str]) -> np.ndarray:
    return _stat_rows([_stat_or_none(p) for p in paths])


def _stat_or_none(path: str) -> os.stat_result | None:
    """The stat of a regular file through symbolic links; None where the path leads to none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info if S_ISREG(info.st_mode) else None


def _unlabelled(files: list[str], stats: np.ndarray) -> Listing:
    """A Listing without classes (labels all 0), in code-point order of its paths, so that every run and
    every backend sees the same index -> file mapping."""
    order = sorted(range(len(files)), key=files.__getitem__)
    stats = stats[order]
    return Listing([], [files[i] for i in order], np.zeros(len(files), np.int64), stats[:, 0].copy(),
                   stats[:, 1].copy())


def _require_folder(root: Path, what: str) -> None:
    if not root.exists():
        raise DataError(f"{what} {str(root)!r}: does not exist")
    if not root.is_dir():
        raise DataError(f"{what} {str(root)!r}: is not a directory")


LISTERS: dict[str, Callable[[Path], Listing]] = {"classes": list_folder, "nested": list_nested, "list": list_file}


@dataclass(frozen=True)
class Source:
    """What an index lists: `path` read as `kind` (LISTERS); listed names are relative to `root`, the
    folder itself or, for a list file, the folder that holds it."""

    path: Path
    kind: str = "classes"

    @property
    def root(self) -> Path:
        return self.path.parent if self.kind == "list" else self.path

    def listing(self) -> Listing:
        return LISTERS[self.kind](self.path)


def images_source(path: str | os.PathLike) -> Source:
    """How data.dataset=images reads `path`: a folder at any depth, or a .txt list of image paths;
    DataError naming the rule where it is neither."""
    kind = images_kind(path)
    if kind is None:
        raise DataError(f"data.path {str(path)!r}: {IMAGES_PATH_RULE} for data.dataset=images")
    return Source(Path(path), kind)


@dataclass
class FolderIndex:
    """A source's files with labels, header sizes and status; positions are the listing's order."""

    source: Source
    listing: Listing
    height: np.ndarray
    width: np.ndarray
    status: np.ndarray                                   # HEADER, DECODED or BAD per file
    reasons: dict[int, str] = field(default_factory=dict)   # position -> why it is BAD
    header_reads: int = 0                                # headers read by the load that made this

    @property
    def root(self) -> Path:
        """The folder the listed names are relative to."""
        return self.source.root

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
        path = index_path(self.source.path, self.source.kind)
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
    out: list[tuple[int, int, str]] = []
    for chunk in _pool_map(_header_chunk, _chunks(paths), len(paths) >= PARALLEL_MIN):
        out += chunk
        if progress is not None:
            progress(len(out), len(paths))
    return out


def load_index(path: str | os.PathLike, rebuild: bool = False, progress: Progress | None = None,
               kind: str = "classes") -> FolderIndex:
    """The index of `path` listed as `kind` (an ImageFolder split by default), brought up to date with
    the files and saved when anything changed.

    `progress` hears about header passes of PROGRESS_MIN files or more.
    """
    source = Source(Path(path), kind)
    listing = source.listing()
    stored = index_path(source.path, kind)
    with _locked(stored):
        old = None if rebuild else _read(stored, source.path, kind)
        index, unchanged = _update(source, listing, old, progress)
        if not unchanged:
            _save(index, stored)
    return index


def _update(source: Source, listing: Listing, old: FolderIndex | None,
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
        kept, was = np.flatnonzero(known), before[known]
        height[kept], width[kept], status[kept] = old.height[was], old.width[was], old.status[was]
        new_position = np.full(len(old), -1, np.int64)
        new_position[was] = kept
        reasons = {int(new_position[s]): why for s, why in old.reasons.items() if new_position[s] >= 0}
        fresh = np.flatnonzero(~known)
    index = FolderIndex(source, listing, height, width, status, reasons, header_reads=len(fresh))
    if len(fresh):
        shown = progress if len(fresh) >= PROGRESS_MIN else None
        headers = read_headers([os.path.join(source.root, listing.files[i]) for i in fresh], shown)
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
        "version": np.asarray(VERSION), "root": _blob([str(index.source.path.resolve())]),
        "kind": _blob([index.source.kind]),
        "classes": _blob(listing.classes), "files": _blob(listing.files), "labels": listing.labels,
        "nbytes": listing.nbytes, "mtime_ns": listing.mtime_ns, "height": index.height, "width": index.width,
        "status": index.status, "reasons": _blob([json.dumps({str(k): v for k, v in index.reasons.items()})]),
    }
    with atomic_path(path) as part, open(part, "wb") as out:
        np.savez(out, **arrays)


def _read(path: Path, root: Path, kind: str = "classes") -> FolderIndex | None:
    """The stored index of `root` listed as `kind`, or None when there is none; a damaged or foreign one
    (another version, path or kind) is rebuilt. An index without a kind was written by an ImageFolder,
    before kinds existed."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            data = {name: stored[name] for name in stored.files}
        stored_kind = _strings(data["kind"]) if "kind" in data else ["classes"]
        if int(data["version"]) != VERSION or _strings(data["root"]) != [str(root.resolve())] \
                or stored_kind != [kind]:
            log.warning("dataset index %s: written for another version, path or kind of listing; rebuilding it",
                        path)
            return None
        listing = Listing(_strings(data["classes"]), _strings(data["files"]), data["labels"], data["nbytes"],
                          data["mtime_ns"])
        reasons = {int(k): v for k, v in json.loads(_strings(data["reasons"])[0]).items()}
        index = FolderIndex(Source(root, kind), listing, data["height"], data["width"], data["status"].copy(),
                            reasons)
        lengths = {len(listing.files), len(listing.labels), len(listing.nbytes), len(listing.mtime_ns),
                   len(index.height), len(index.width), len(index.status)}
        if len(lengths) != 1:
            raise ValueError(f"arrays of lengths {sorted(lengths)}")
        return index
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
        log.warning("dataset index %s: unreadable (%s); rebuilding it", path, e)
        return None
