"""Checkpoints that survive a crash mid-write, load without executing pickled code, and prove their bytes.

Written to a temporary file in the same folder, flushed to disk, then renamed over the old one: a kill
at any moment leaves either the previous checkpoint or the new one, never a torn file; a full disk is
an error naming the file and the size it needed. Loaded with `weights_only=True`, so everything
inside is tensors and plain Python values.

torch.save writes a zip whose entries carry CRC-32s that torch.load never checks, so flipped bytes
on disk or in a copy would load as a silently different network. Each checkpoint therefore also
holds the CRC-32 of every tensor's bytes (`digests`, named as fastssl names them, e.g.
`model: encoder.conv1.weight`), checked on the loaded tensors, so the file is read once; the zip's own
CRC-32s cover the pickled structure (data.pkl: names, shapes, values, the digests themselves).
Checkpoints written before the digests existed are checked by the zip's CRC-32s alone, which name
the damaged zip entry instead of the tensor.
"""
from __future__ import annotations

import os
import random
import re
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fastssl.loaders.atomic import atomic_path

FORMAT = "fastssl-checkpoint-v1"
DIGESTS = "digests"      # {tensor name: CRC-32 of its bytes}; absent from checkpoints written before it
CHUNK = 1 << 20          # bytes read at a time when a zip entry's CRC-32 is checked


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not ours; the message names the file."""


def _tensors(value, name: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
    """Every tensor of a nested state with the keys that lead to it."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, (*name, str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, (*name, str(index)))


def _label(name: tuple[str, ...]) -> str:
    """A tensor's name as fastssl says it: the component, then the key in its state (`model: encoder.conv1.weight`)."""
    return f"{name[0]}: {'.'.join(name[1:])}" if len(name) > 1 else name[0]


def _tensor_bytes(value) -> int:
    """Bytes of every tensor in a nested state: about what torch.save writes."""
    return sum(t.numel() * t.element_size() for _, t in _tensors(value))


def _crc32(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes in memory order: dims sorted by stride make a channels_last weight
    a view, not a copy; viewed as uint8 since numpy has no bfloat16."""
    order = sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d))
    flat = tensor.detach().permute(order).reshape(-1).cpu()
    return zlib.crc32(flat.view(torch.uint8).numpy())


def digests(state: dict) -> dict[str, int]:
    """{tensor name: CRC-32 of its bytes} of every tensor in `state`."""
    return {_label(name): _crc32(tensor) for name, tensor in _tensors(state)}


def seal(state: dict) -> dict:
    """What a checkpoint file holds: the state, the format tag and every tensor's digest."""
    return {"format": FORMAT, **state, DIGESTS: digests(state)}


def _on_cpu(value):
    """The nested state with its tensors on the CPU: one device-to-host copy that the digests and torch.save
    share (each would otherwise copy a GPU tensor itself)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically (loaders/atomic.py): a failed save leaves the previous checkpoint and no temporary file."""
    state = _on_cpu(state)
    with atomic_path(path, _tensor_bytes(state)) as tmp:
        with open(tmp, "wb") as f:
            torch.save(seal(state), f)


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(path)!r}: cannot be read as a fastssl checkpoint "
                           f"(truncated or corrupt file?): {type(error).__name__}: {error}")


def _is_storage(entry: str) -> bool:
    """torch.save's zip holds one entry PREFIX/data/KEY per tensor storage, beside its small records."""
    return re.fullmatch(r"[^/]+/data/\d+", entry) is not None


def _role(entry: str) -> str:
    """What a zip entry of torch.save holds, for the message naming it."""
    if _is_storage(entry):
        return "a tensor's bytes"
    return "the pickled structure: names, shapes and values" if entry.endswith("/data.pkl") else "torch's record"


def _check_entries(path: Path, archive: zipfile.ZipFile, storages: bool) -> None:
    """Reads the storage entries (or every other entry) through zipfile, which checks each one's CRC-32."""
    for info in archive.infolist():
        if _is_storage(info.filename) != storages:
            continue
        try:
            with archive.open(info) as entry:
                while entry.read(CHUNK):
                    pass
        except zipfile.BadZipFile as e:   # a wrong CRC-32, or a damaged entry header
            raise CheckpointError(f"checkpoint {str(path)!r}: zip entry {info.filename!r} ({_role(info.filename)}) "
                                  f"is damaged: {e}") from e


def _check_digests(path: Path, state: dict, saved: dict[str, int]) -> None:
    found = digests(state)
    damaged = [name for name in dict.fromkeys([*saved, *found]) if saved.get(name) != found.get(name)]
    if damaged:
        more = f" (and {len(damaged) - 1} more tensors)" if len(damaged) > 1 else ""
        raise CheckpointError(f"checkpoint {str(path)!r}: tensor {damaged[0]!r} is damaged: its bytes do not "
                              f"match the CRC-32 saved with it{more}")


def _misfit(saved, own) -> str | None:
    """The first tensor of `saved` whose shape differs from the same key's in `own`, both shapes shown."""
    shapes = {name: tensor.shape for name, tensor in _tensors(own)}
    for name, tensor in _tensors(saved):
        if name in shapes and tensor.shape != shapes[name]:
            return f"{'.'.join(name)} is {tuple(tensor.shape)} in the checkpoint, {tuple(shapes[name])} now"
    return None


def load_state(part, saved, checkpoint: str | os.PathLike, what: str) -> None:
    """Hands `part` (a module, optimizer or other component) its saved state. One that does not fit is a
    one-line CheckpointError "checkpoint PATH: WHAT: PROBLEM" naming the first key of another shape
    (torch's own error spans a line per key), or torch's words on one line for missing or extra keys."""
    problem = _misfit(saved, part.state_dict())
    if problem is None:
        try:
            part.load_state_dict(saved)
            return
        except (RuntimeError, ValueError, KeyError) as e:   # missing or unexpected keys: torch's words, one line
            problem = f"{type(e).__name__}: {' '.join(str(e).split())}"
    raise CheckpointError(f"checkpoint {str(checkpoint)!r}: {what}: {problem}")


def _read_proven(path: Path) -> dict:
    """torch.load of the file once zipfile has checked data.pkl's CRC-32, then its tensors against their
    digests (checkpoints without digests: every storage entry's CRC-32, a second read of the file)."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception as e:
        raise _unreadable(path, e) from e
    with archive:
        _check_entries(path, archive, storages=False)   # before unpickling: names a damaged data.pkl as such
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise _unreadable(path, e) from e
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {str(path)!r}: not a {FORMAT} file")
        saved = state.pop(DIGESTS, None)
        if saved is None:
            _check_entries(path, archive, storages=True)
        else:
            _check_digests(path, state, saved)
    return state


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """The state save_checkpoint wrote (without its digests), once its bytes are proven intact."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: does not exist")
    state = _read_proven(path)
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r}: lacks {', '.join(missing)}")
    return state


def load_state_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights file that is not a fastssl checkpoint (model.init): safetensors, or a
    torch.save file loaded with weights_only=True, bare or under 'state_dict' (fastssl export's torchvision
    files) or 'model' (most training scripts'); CheckpointError naming `what` and the file otherwise."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{what} {str(path)!r}: cannot be read as a state dict "
                              f"({' '.join(str(e).split())[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {str(path)!r}: must hold a state dict (names -> tensors)")
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
