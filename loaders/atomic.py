"""Files written all at once or not at all: checkpoints, .beton files, evaluation and benchmark results.

Each is written to `NAME.tmp` beside its destination, flushed to disk and renamed over it, so a kill
at any moment leaves the old file or the new one, never a torn one. A write that fails removes its
temporary file (a half-written checkpoint would keep a full disk full), and a full disk is named as
such, with the size the file needed, rather than surfacing as whatever the writer's library says.
Files that grow by records (metrics.jsonl, TensorBoard events) use `append_bytes`: a record lands whole
or the file is cut back to its size before it, with the same message.
Lives in `loaders`, the lowest layer that writes files: `fastssl` and `bench` import it from here.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np


class NoSpaceError(OSError):
    """The disk filled up while writing PATH; nothing was left behind."""

    def __str__(self) -> str:
        return self.strerror   # the message alone: OSError's own form puts "[Errno 28]" in front of it


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)   # makes the rename itself durable
    finally:
        os.close(fd)


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC (or EDQUOT) anywhere in the exception's chain: libraries wrap it in their own errors."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _megabytes(size: int) -> str:
    """One decimal, or one significant digit below 0.1 MB: a metrics line needs 0.0002 MB, not 0.0."""
    mb = size / 2**20
    decimals = 1 if mb >= 0.1 or mb == 0 else -math.floor(math.log10(mb))
    return f"{mb:,.{decimals}f}"


def no_space(path: Path, needed: int | None) -> NoSpaceError:
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    size = f" needs about {_megabytes(needed)} MB" if needed else ""
    return NoSpaceError(errno.ENOSPC, f"no space left on device: {path}{size} ({_megabytes(free)} MB free); "
                        "nothing was written, the previous file (if any) is intact")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yields the temporary path to write; on success it replaces `path`. `needed`: the expected size
    in bytes, for the disk-full message."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            raise no_space(path, needed) from e
        raise


@contextlib.contextmanager
def staged_bytes(path: str | os.PathLike, data: bytes) -> Iterator[Path]:
    """`data` in the temporary file, yielded so that the caller can read it back and check it before it
    replaces `path`. For writers that serialise to memory first because, given a path on a full disk,
    their library aborts the process (torch.jit.save) or hides ENOSPC in its own error (torch.save)."""
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)
        yield tmp


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with staged_bytes(path, data):
        pass


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def save_npy(path: str | os.PathLike, array) -> None:
    """A numpy array as a .npy file, atomically (np.save given a name would append .npy to a .tmp one)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(path, buffer.getvalue())


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Adds `data` at the end of `path` (created if absent), whole or not at all: a failed write (a full
    disk) cuts the file back to its size before, or removes the file it created, so a reader never
    meets a torn record; a full disk is a NoSpaceError as in `atomic_path`. Not fsynced (a log is
    written every step): what a killed process wrote is with the kernel already."""
    path = Path(path)
    created = not path.exists()
    with open(path, "ab", buffering=0) as f:   # unbuffered: nothing is left to flush after a failure
        size = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:   # a write may take part of the data: the disk filled up in between
                view = view[f.write(view):]
        except BaseException as e:
            f.truncate(size)
            if created:
                path.unlink(missing_ok=True)
            if _is_disk_full(e):
                raise no_space(path, len(data)) from e
            raise


def write_csv(path: str | os.PathLike, fieldnames: list[str], rows) -> None:
    """Dict rows as CSV with a header, atomically."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """A matplotlib figure, atomically, in the format its file name says."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip("."))
