"""Checkpoints that survive a crash mid-write and load without executing pickled code.

Written to a temporary file in the same folder, flushed to disk, then renamed over the old one: a kill
at any moment leaves either the previous checkpoint or the new one, never a torn file; a full disk is
an error naming the file and the size it needed. Loaded with `weights_only=True`, so everything
inside is tensors and plain Python values.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from fastssl.loaders.atomic import atomic_path

FORMAT = "fastssl-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not ours; the message names the file."""


def _tensor_bytes(value) -> int:
    """Bytes of every tensor in a nested state: about what torch.save writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically (loaders/atomic.py): a failed save leaves the previous checkpoint and no temporary file."""
    with atomic_path(path, _tensor_bytes(state)) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot be read as a fastssl checkpoint "
                              f"(truncated or corrupt file?): {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: not a {FORMAT} file")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r}: lacks {', '.join(missing)}")
    return state


def capture_rng() -> dict:
    """Every global RNG a training step may touch, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
