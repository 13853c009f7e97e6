"""Step timestamps for any trainer, taken the same way for all: a global optimizer step hook.

torch calls hooks registered with `register_optimizer_step_post_hook` after every `Optimizer.step` of
every optimizer, subclasses included (LARS, Lightning's wrapped optimizers), so fastssl, a hand-written
lightly loop and LightlyTrain's Lightning loop are timed by one piece of code that none of them knows.
On a GPU the hook synchronises every `sync_every` steps only, so the timestamps at those steps are
exact and the others cost nothing; windows are cut at the synchronised steps.
"""
from __future__ import annotations

import resource
import statistics
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class StepClock:
    def __init__(self, sync_every: int = 1):
        self.times: list[float] = []       # time.time() after each optimizer step
        self.sync_every = max(1, sync_every)
        self._handle = None

    def start(self) -> "StepClock":
        self._handle = register_optimizer_step_post_hook(self._tick)
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _tick(self, optimizer, args, kwargs) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized() and len(self.times) % self.sync_every == 0:
            torch.cuda.synchronize()
        self.times.append(time.time())


def window_rates(times: list[float], batch: int, skip: int, window: int) -> list[float]:
    """Images/s of each run of `window` steps after the first `skip` (compilation, JIT, worker start),
    measured between step ends: window w spans steps skip + w * window .. skip + (w + 1) * window."""
    ends = times[skip:]
    return [batch * window / (ends[i + window] - ends[i])
            for i in range(0, len(ends) - window, window) if ends[i + window] > ends[i]]


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(times: list[float], batch: int, launched: float, skip: int, window: int) -> dict:
    """Median, p20 and p80 of the window rates, time to first step from launch, steps timed."""
    rates = window_rates(times, batch, skip, window)
    out = {"steps": len(times), "first_step_s": round(times[0] - launched, 3) if times else None,
           "windows": len(rates), "window_steps": window, "skipped_steps": skip}
    if rates:
        out.update(ips_median=statistics.median(rates), ips_p20=quantile(rates, 0.2), ips_p80=quantile(rates, 0.8))
    return out


def peak_memory_mib() -> dict:
    """The training process's peak RSS (its data-loading workers are other processes) and the CUDA
    allocator's peak, in MiB."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out
