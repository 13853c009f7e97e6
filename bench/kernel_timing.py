"""Time, memory and saved-tensor measurements that every kernel microbenchmark shares.

A measured call comes in two parts: `prepare(buffer)` runs untimed and returns the thunk that is
timed, so a backward can be timed alone after an untimed forward of its own. Every call takes the
next buffer of one cycle shared by all providers and modes of a shape, long enough to outgrow the
last-level cache, so no call finds its inputs cached by an earlier one. CUDA times come from events
around the thunk alone, CPU times from a monotonic clock.
"""
from __future__ import annotations

import gc
import math
import time
from typing import Any, Callable, Iterator

import torch

Prepare = Callable[[Any], Callable[[], Any]]

CPU_CACHE_BYTES = 64 << 20  # torch does not report a CPU's last-level cache; a generous guess
MAX_BUFFERS = 1024  # inputs so small that more are needed are timed by launch overhead, not memory


def buffer_count(nbytes: int, device: torch.device) -> int:
    """How many input buffers to cycle through: together twice the last-level cache, 3 to MAX_BUFFERS."""
    cache = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else CPU_CACHE_BYTES
    return min(MAX_BUFFERS, max(3, math.ceil(2 * cache / max(nbytes, 1))))


def time_calls(prepare: Prepare, buffers: Iterator, *, reps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per timed thunk, one sample per repetition, after `warmup` untimed repetitions.

    Each repetition starts on an idle device (synchronised), so samples never overlap.
    """
    samples = []
    for i in range(warmup + reps):
        thunk = prepare(next(buffers))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = thunk()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            begin = time.perf_counter()
            out = thunk()
            elapsed = time.perf_counter() - begin
        del out  # freed after the clock stops: deallocation is not the kernel's time
        if i >= warmup:
            samples.append(elapsed)
    return samples


def peak_extra_bytes(prepare: Prepare, buffer: Any, device: torch.device) -> int:
    """CUDA bytes the thunk allocates at its peak beyond what was allocated before it (inputs, prepared state)."""
    thunk = prepare(buffer)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = thunk()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return peak


def saved_bytes(fn: Callable[..., Any], *inputs: Any) -> int:
    """Bytes autograd holds for backward after `fn(*inputs)`, on any device.

    Every tensor saved for backward passes the pack hook; each distinct storage counts once (q and
    k may be one tensor, and views share their base), at its full size, because that is what stays
    alive. Saved inputs count too: the graph keeps them alive.
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(storages.values())


def unless_oom(measure: Callable[[], Any]) -> Any:
    """measure(), or None when it ran out of CUDA memory (memory freed), so the caller records the OOM."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        pass  # leave the except block first: its traceback pins the frames that hold the tensors
    gc.collect()
    torch.cuda.empty_cache()
    return None
