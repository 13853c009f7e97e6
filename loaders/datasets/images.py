"""The `images` reader: unlabelled image files, in a folder nested to any depth or named by a .txt list.

For pretraining on images that come without labels (video frames, scans, product photos), however they
are filed: sub-folders are not classes. It is the ImageFolder reader (IndexedImages: the start-up
index, the raise/skip policy for bad files, every backend's attributes) over another listing: the
files of a folder at any depth, or the paths a list file names, in code-point order of those paths
(index.py's "nested" and "list" kinds). Labels are all 0 and `classes` is empty; `labelled` is False,
so readers that need labels (the kNN monitor, evaluations) can ask and refuse.
"""
from __future__ import annotations

import os

from .imagefolder import IndexedImages
from .index import images_source

__all__ = ["ImagesDataset"]


class ImagesDataset(IndexedImages):
    """Unlabelled images: `path` is a folder (image files at any depth, symbolic links followed, names
    starting with '.' skipped) or a .txt file listing one image path per line (relative to its folder).

    DataError for a path that is neither, or that holds or lists no image file; a listed path that
    leads to no image file is a bad file, settled by `on_error` as in an ImageFolder.
    """

    labelled = False
    TITLE = "images"
    CHECK = "fastssl data check --images"

    def __init__(self, path: str | os.PathLike, on_error: str = "raise"):
        source = images_source(path)
        super().__init__(source.path, on_error, source.kind)
