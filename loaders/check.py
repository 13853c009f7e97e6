"""`fastssl data check PATH`: decode every file of an ImageFolder (or, with --images, of an `images` source:
a folder read at any depth, or a .txt list) and report what would stop or change a run.

Start-up reads headers only (the folder's index), so a file whose header parses but whose pixels do
not (a truncated JPEG) is met mid-run. This is the pass that finds all of them up front: each file is
decoded fully by PIL with the ImageFolder reader's own `decode`, so "passes the check" means "loads
under the torchvision backend", and the outcome is recorded in the index, so that the next run names
or skips the bad files at start-up without reading them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .datasets.base import DataError
from .datasets.files import EXTENSIONS, decode_many, folders_and_broken_links, image_entries, is_image_name, list_dir
from .datasets.index import Source, images_source, load_index, nested_folders
from .progress import Progress

log = logging.getLogger(__name__)


@dataclass
class Report:
    """The findings of `check_folder`; `ok` when nothing would stop or change a training run."""

    root: Path
    images: int = 0                                               # files that decode
    bad: list[tuple[Path, str]] = field(default_factory=list)     # image files that do not
    non_images: list[Path] = field(default_factory=list)          # files without an image extension
    empty_classes: list[Path] = field(default_factory=list)       # class folders with no image file
    broken_classes: list[tuple[Path, str]] = field(default_factory=list)   # links that lead nowhere, why
    hidden: int = 0                                               # names starting with '.', in the folders read
    labelled: bool = True                                         # an ImageFolder; else an `images` source

    @property
    def ok(self) -> bool:
        return not (self.bad or self.empty_classes or self.broken_classes)

    def lines(self) -> list[str]:
        """One line per finding, then a summary."""
        out = [f"bad image: {p}: {why}" for p, why in self.bad]
        out += [f"empty class folder: {p}: holds no image file ({' '.join(EXTENSIONS)})" for p in self.empty_classes]
        out += [f"class folder that leads nowhere: {p}: {why}" for p, why in self.broken_classes]
        out += [f"not an image (ignored by the loaders): {p}" for p in self.non_images]
        verdict = "ok" if self.ok else "FAILED"
        classes = (f"{len(self.empty_classes)} empty class folders, {len(self.broken_classes)} class folders that "
                   f"lead nowhere, ") if self.labelled else ""
        out.append(f"{self.root}: {verdict}: {self.images} images decode, {len(self.bad)} bad, {classes}"
                   f"{len(self.non_images)} non-image files, "
                   f"{self.hidden} hidden files/folders ignored (names starting with '.')")
        return out


def check_folder(root: str | Path, progress: Progress | None = None) -> Report:
    """Decode every image file of `root/<class>/*`; report bad files, empty classes, class folders that lead
    nowhere (a dangling symbolic link, a loop of links: a run stops at them) and non-image files.

    A missing root, one without class folders, or a split root (`train/`, `test/` holding class folders)
    is a DataError: there is nothing to check, or the class folders are one level down.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageFolder root {str(root)!r}: is not an existing directory")
    folders, broken = folders_and_broken_links(root)
    if not folders and not broken:
        raise DataError(f"ImageFolder root {str(root)!r}: has no class folders (expected root/<class>/<files>)")
    _refuse_split_root(root)
    report = Report(root, hidden=_hidden(root), broken_classes=broken)
    paths: list[Path] = []
    for folder in folders:
        report.hidden += _hidden(folder)
        images = [folder / name for name in image_entries(folder)[0]]   # links that lead nowhere included
        report.non_images += [p for p in list_dir(folder) if p.is_file() and not is_image_name(p.name)]
        if not images:
            report.empty_classes.append(folder)
        paths += images
    # An index exists only for a folder a run can read.
    readable = not (report.empty_classes or report.broken_classes)
    files = [f"{p.parent.name}/{p.name}" for p in paths]
    return _decode(report, Source(root), files, paths, progress, record=readable)


def check_images(path: str | Path, progress: Progress | None = None) -> Report:
    """Decode every file the `images` reader serves from `path` (a folder at any depth, or a .txt list);
    report bad files and, in a folder, non-image files. DataError for a path that is neither, or that
    holds or lists no image file: a run stops there too."""
    source = images_source(path)
    listing = source.listing()
    folders = [source.path / f for f in nested_folders(source.path)] if source.kind == "nested" else []
    report = Report(source.path, labelled=False, hidden=sum(_hidden(f) for f in folders),
                    non_images=[p for f in folders for p in list_dir(f) if p.is_file() and not is_image_name(p.name)])
    paths = [source.root / f for f in listing.files]
    return _decode(report, source, listing.files, paths, progress, record=True)


def _decode(report: Report, source: Source, files: list[str], paths: list[Path], progress: Progress | None,
            record: bool) -> Report:
    """Decode `paths` (the listing `files` of `source`, as files), note the outcome in `report` and, where
    `record`, in the source's index."""
    failures = decode_many(paths, progress=progress)
    if record:
        _record(source, files, failures)
    report.bad = [(paths[i], why) for i, why in failures]
    report.images = len(paths) - len(failures)
    return report


def _record(source: Source, files: list[str], failures: list[tuple[int, str]]) -> None:
    """Note in the source's index which files decode and which do not (unless files moved meanwhile)."""
    index = load_index(source.path, kind=source.kind)
    if index.files != files:
        log.warning("%s changed during the check: its index records nothing of it", source.path)
        return
    bad = {i for i, _ in failures}
    index.record([i for i in range(len(files)) if i not in bad], failures)
    index.save()


def _hidden(folder: Path) -> int:
    """Entries of `folder` the ImageFolder reader skips for their leading '.' (`.DS_Store`, `._x.jpg`)."""
    return sum(1 for p in folder.iterdir() if p.name.startswith("."))


def split_folders(root: Path) -> list[Path]:
    """The split folders of `root` when it holds splits (no sub-folder holds an image file, some hold
    folders: `train/`, `test/`), else []."""
    folders = _folders(root)
    if any(p.is_file() and is_image_name(p.name) for folder in folders for p in list_dir(folder)):
        return []
    return [folder for folder in folders if _folders(folder)]


def _folders(root: Path) -> list[Path]:
    """The folders of `root`; a link that leads nowhere is left to the listings that read labels (telling a
    split root from a class root reads none)."""
    return folders_and_broken_links(root)[0]


def _refuse_split_root(root: Path) -> None:
    """A DataError when `root` holds splits: checked as a class root, `train/` and `test/` would each be
    reported as an empty class folder."""
    splits = split_folders(root)
    if splits:
        named = ", ".join(f"{f.name}/" for f in splits)
        checks = " and ".join(f"`fastssl data check {f}`" for f in splits)
        raise DataError(f"{str(root)!r} looks like a split root ({named} hold class folders, not image "
                        f"files): run {checks}")

