"""Where a training step's time goes: boundaries marked between its stages, read once, later.

A step is a sequence of stages (waiting for the loader, building the task, forward, ...); the code
marks where each one ends. On CUDA a mark records an event on the current stream and nothing waits:
the events are read when the caller asks for the durations (at a log step, which synchronises
anyway), so timing does not change what it times. `sync=True` synchronises the device at every mark
instead: asynchronous work is then attributed to the stage that queued it, at the price of a
pipeline drained at every boundary. On the CPU a mark is a `perf_counter` reading. With `annotate`
each stage is also a named range for torch.profiler traces and, on CUDA, for Nsight Systems (NVTX).
With `memory` (CUDA) each stage also records the allocator's peak while it ran (host bookkeeping, no
synchronisation).
"""
from __future__ import annotations

import time

import torch

REST = "rest"          # the time of a step after its last mark


class StageClock:
    """Marks of the steps in flight; `take()` turns them into per-step durations in milliseconds."""

    def __init__(self, device: torch.device, sync: bool = False, annotate: bool = False, memory: bool = False):
        self.cuda = device.type == "cuda"
        self.sync, self.annotate, self.memory = sync, annotate, memory and self.cuda
        self._steps: list[list[tuple[str, object]]] = []     # per step: (stage that ends here, its mark)
        self._range = None
        self.peak_mib: dict[str, float] = {}                 # per stage, the highest peak since the last take

    def _now(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        if self.sync:
            torch.cuda.synchronize()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _open_range(self, name: str | None) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            if self.cuda:
                torch.cuda.nvtx.range_pop()
            self._range = None
        if name is not None:
            self._range = torch.profiler.record_function(name)
            self._range.__enter__()
            if self.cuda:
                torch.cuda.nvtx.range_push(name)

    def start(self, first_stage: str) -> None:
        """A step begins with `first_stage`."""
        self._steps.append([("", self._now())])
        if self.memory:
            torch.cuda.reset_peak_memory_stats()
        if self.annotate:
            self._open_range(first_stage)

    def mark(self, stage: str, next_stage: str | None = None) -> None:
        """`stage` ends here (it began at the previous mark); `next_stage` names the range that follows.
        Outside a step (a loader iterated, or train_step called, on their own) a mark is nothing."""
        if not self.running:
            return
        self._steps[-1].append((stage, self._now()))
        if self.memory:
            peak = torch.cuda.max_memory_allocated() / 2**20
            self.peak_mib[stage] = max(self.peak_mib.get(stage, 0.0), peak)
            torch.cuda.reset_peak_memory_stats()
        if self.annotate:
            self._open_range(next_stage)

    @property
    def running(self) -> bool:
        """A step was started and not yet stopped."""
        return bool(self._steps) and self._steps[-1][-1][0] != REST

    def discard(self) -> None:
        """Forget the step started last (the loader had no batch left for it)."""
        if self._steps:
            self._steps.pop()
        if self.annotate:
            self._open_range(None)

    def stop(self) -> None:
        """The step ends here; the time since its last mark is REST."""
        self.mark(REST)

    def take(self) -> list[dict[str, float]]:
        """Durations of every finished step since the last take, {stage: ms} plus "step" (the whole
        step); stages marked twice in a step add up. A step still running stays for the next take.
        Waits for the device once, on CUDA."""
        running = self._steps[-1:] if self.running else []
        done, self._steps = self._steps[:len(self._steps) - len(running)], running
        if self.cuda and done:
            done[-1][-1][1].synchronize()
        steps = []
        for marks in done:
            durations: dict[str, float] = {}
            for (_, before), (stage, after) in zip(marks, marks[1:]):
                durations[stage] = durations.get(stage, 0.0) + self._elapsed(before, after)
            durations["step"] = self._elapsed(marks[0][1], marks[-1][1])
            steps.append(durations)
        return steps

    def _elapsed(self, before: object, after: object) -> float:
        if self.cuda:
            return before.elapsed_time(after)
        return (after - before) * 1000.0


# The stages a loader marks inside its iterator (the trainer marks the rest of the step).
LOADER_WAIT = "loader wait"     # waiting for workers / the pipeline, and host work in the iterator
H2D_COPY = "h2d copy"           # host-to-device copies of the decoded batch
AUGMENT = "augment"             # augmentation on the device


class StageMarks:
    """A loader's share of the step clock: the trainer attaches its clock; without one, marks are free."""

    clock: StageClock | None = None

    def mark(self, stage: str, next_stage: str | None = None) -> None:
        if self.clock is not None:
            self.clock.mark(stage, next_stage)
