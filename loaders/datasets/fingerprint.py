"""What a training split is, in a few hundred bytes: the fingerprint a checkpoint keeps of its data.

A resumed run continues its data order (a permutation of the split's indices, epoch by epoch), so it
must read the data it was trained on: the same images at the same indices. A folder that gained or
lost files between a preemption and its requeue, or a node whose local copy differs, would resume
silently into another run. A fingerprint is the number of images, their bytes, an order-sensitive
digest and, per class, its count and digest, so that a difference can be named ("class n01440764:
1,300 -> 1,298 images") instead of only detected.

Files are fingerprinted by their names (relative to the split's root, so a moved dataset keeps its
fingerprint) and byte sizes, as the index lists them: no file is read. Pixels held in memory (CIFAR,
Fashion-MNIST, Omniglot, the generated splits) are fingerprinted by their bytes and labels.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

SHOWN = 5   # classes named in a description of changes; the rest are counted

Fingerprint = dict   # {"kind", "images", "bytes", "digest", "classes": [[name, count, digest], ...]}


def _digest(*parts: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:32]


def _by_class(labels: np.ndarray, classes: Sequence[str] | None, digest_of) -> list[list]:
    """[[class name, count, digest of its items in index order], ...] for every class, named or not;
    [] for unlabelled data (`classes` None)."""
    if classes is None:
        return []
    labels = np.asarray(labels, dtype=np.int64)
    names = list(classes) or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    order = np.argsort(labels, kind="stable")
    ends = np.searchsorted(labels[order], np.arange(len(names)), side="right")
    starts = np.concatenate([[0], ends[:-1]])
    return [[name, int(end - start), digest_of(order[start:end])] for name, start, end in zip(names, starts, ends)]


def files_fingerprint(names: Sequence[str], nbytes: np.ndarray, labels: np.ndarray,
                      classes: Sequence[str] | None) -> Fingerprint:
    """Files named `names` (relative paths, in index order) of `nbytes` bytes, labelled `labels`."""
    sizes = np.ascontiguousarray(nbytes, dtype=np.int64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)

    def of(items: np.ndarray) -> str:
        return _digest("\0".join(names[i] for i in items).encode(errors="surrogateescape"),
                       sizes[items].tobytes())
    return {"kind": "files", "images": len(names), "bytes": int(sizes.sum()),
            "digest": _digest("\0".join(names).encode(errors="surrogateescape"), sizes.tobytes(), labels.tobytes()),
            "classes": _by_class(labels, classes, of)}


def pixels_fingerprint(images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> Fingerprint:
    """Images held in memory (uint8 (N, H, W, C)) and their labels."""
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    shape = np.asarray(images.shape, dtype=np.int64).tobytes()
    return {"kind": "pixels", "images": len(images), "bytes": int(images.nbytes),
            "digest": _digest(shape, memoryview(images).cast("B"), labels.tobytes()),
            "classes": _by_class(labels, classes, lambda items: _digest(images[items].tobytes()))}


def fingerprint(dataset) -> Fingerprint | None:
    """The dataset's fingerprint, or None for one that cannot give it (a user's own reader)."""
    make = getattr(dataset, "fingerprint", None)
    return make() if callable(make) else None


def _count(n: int, what: str = "image") -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN:,} more" if len(names) > SHOWN else "")


def changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """What differs between two fingerprints, one phrase each; [] when they are the same."""
    if old == new:
        return []
    if old.get("kind") != new.get("kind"):
        return [f"the data were {old.get('kind')} and are {new.get('kind')} now"]
    lines = []
    if old["images"] != new["images"]:
        lines.append(f"{_count(old['images'])} -> {_count(new['images'])}")
    if old["bytes"] != new["bytes"]:
        lines.append(f"{old['bytes']:,} -> {new['bytes']:,} bytes")
    before = {name: (count, digest) for name, count, digest in old["classes"]}
    after = {name: (count, digest) for name, count, digest in new["classes"]}
    gone = [name for name in before if name not in after]
    added = [name for name in after if name not in before]
    if gone:
        lines.append(f"classes removed: {_names(gone)}")
    if added:
        lines.append(f"classes added: {_names(added)}")
    recounted = [f"{name} ({before[name][0]:,} -> {after[name][0]:,})" for name in before
                 if name in after and before[name][0] != after[name][0]]
    if recounted:
        lines.append(f"classes with another number of images: {_names(recounted)}")
    altered = [name for name in before if name in after and before[name][0] == after[name][0]
               and before[name][1] != after[name][1]]
    if altered:
        lines.append(f"classes with as many images, other content: {_names(altered)}")
    if not lines:   # the same classes and files, another order or other labels
        lines.append("the same images in another order or under other labels")
    return lines
