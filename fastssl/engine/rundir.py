"""A run's folder belongs to one run, written by one process at a time.

Runs started without --out are named by the time they start, and a sweep script starts several in
the same second: they shared one folder, two results were lost and metrics.jsonl interleaved three
runs. A default folder is therefore created with os.mkdir, which fails if it exists, trying the
suffixes -2, -3, ... until one is new. And two processes writing one folder (a second --resume of a
run still going) crashed on each other's temporary checkpoint and logged steps twice, so the process
that writes a folder holds an exclusive lock on RUN/.lock, with its pid, host, start time and command
inside for whoever is refused. The kernel drops the lock when the process dies, SIGKILL included, so
a killed run never leaves a stale one. It is a POSIX record lock (fcntl), not an flock: an flock
belongs to the open file, which forked children share, so the DataLoader workers of a SIGKILLed run,
alive for a moment after it, held it and refused the `--resume` started right after; a record lock
belongs to the process alone (and works across hosts on NFS). Within one process a folder may be
claimed again (the lock is the process's, counted), as tests and notebooks do with a Trainer per attempt.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from fastssl.loaders import atomic

LOCK = ".lock"
MAX_SUFFIX = 10_000
_held: dict[str, list] = {}   # realpath of a run folder -> [open lock file, claims by this process]


class RunDirError(RuntimeError):
    """The run folder cannot be made, written or claimed; the message names it and what to do."""


def default_path(root: Path = Path("runs")) -> Path:
    """runs/<date-time> of now: the stem a new default folder is made from (new_folder adds a suffix)."""
    return root / time.strftime("%Y%m%d-%H%M%S")


def new_folder(stem: Path) -> Path:
    """A folder that did not exist, made atomically: `stem`, else `stem-2`, `stem-3`, ..."""
    _writable_parent(stem)
    for n in range(1, MAX_SUFFIX + 1):
        path = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"run directory {str(path)!r}: cannot be created ({e.strerror or e})") from None
    raise RunDirError(f"run directory {str(stem)!r}: it and its {MAX_SUFFIX - 1} suffixed names exist; "
                      "choose a folder with --out")


def _writable_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"run directory {str(path)!r}: its parent cannot be created ({e.strerror or e})") from None


def claim(path: Path) -> Path:
    """Lock `path` (created if missing) for this process, or raise RunDirError naming the holder; a
    folder this call made is removed again when it cannot be claimed."""
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        return path
    created = not path.exists()
    try:
        _held[key] = [_lock(path), 1]
    except BaseException:
        if created:
            remove_if_unused(path)
        raise
    return path


def _lock(path: Path):
    """RUN/.lock, open, exclusively locked and naming this process."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / LOCK, "a+b", buffering=0)   # unbuffered: a failed write leaves nothing to flush
    except OSError as e:
        raise _unwritable(path, e) from None
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.seek(0)
        holder = _describe(handle.read().decode(errors="replace"))
        handle.close()
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise RunDirError(f"run directory {str(path)!r}: cannot be locked ({e.strerror or e})") from None
        raise RunDirError(f"run directory {str(path)!r}: in use by {holder}; wait for it to end, or choose "
                          "another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write((json.dumps(_holder()) + "\n").encode())
    except OSError as e:
        handle.close()
        raise _unwritable(path, e) from None
    return handle


def _unwritable(path: Path, error: OSError) -> OSError:
    """A full disk in atomic.py's words; any other failure as a RunDirError."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return atomic.no_space(path / LOCK, None)
    return RunDirError(f"run directory {str(path)!r}: cannot be written ({error.strerror or error})")


def release(path: Path) -> None:
    """End one claim of `path` by this process; the last one unlocks it (the file stays: it is reused)."""
    key = os.path.realpath(path)
    if key not in _held:
        return
    _held[key][1] -= 1
    if _held[key][1] == 0:
        _held.pop(key)[0].close()


def remove_if_unused(path: Path) -> None:
    """Remove `path` if it holds nothing but its lock file: a run refused before it wrote anything (a
    method's rule, no GPU, unreadable data) leaves no empty folder behind."""
    try:
        if {p.name for p in path.iterdir()} <= {LOCK}:
            (path / LOCK).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass   # written meanwhile, or already gone: nothing of a run is removed


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} since {h['since']} ({h['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
