"""`--profile-steps N`: torch.profiler over N optimizer steps of any trainer, started and stopped by
the same optimizer step hook that times them (clock.py), so fastssl's loop and a peer's are profiled
alike without touching either. Writes profile.txt (operators by self CPU time; self CUDA time too on
a GPU) in the run's folder. A profiled run's rates are the profiler's, not the trainer's: the bench
reports profiled runs apart (their own --work and --out).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class StepProfiler:
    def __init__(self, out: Path, start_after: int, steps: int):
        self.out, self.start_after, self.steps = out, start_after, steps
        self.seen = 0
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.running = False
        self._handle = register_optimizer_step_post_hook(self._tick)

    def _tick(self, optimizer, args, kwargs) -> None:
        self.seen += 1
        if self.seen == self.start_after:
            self.profiler.start()
            self.running = True
        elif self.running and self.seen == self.start_after + self.steps:
            self._write()   # the hook stays registered: torch is iterating over the hooks right now

    def finish(self) -> None:
        """At the run's end: writes the table if the run stopped before the last profiled step, and
        unregisters the hook."""
        self._write()
        self._handle.remove()

    def _write(self) -> None:
        if not self.running:
            return
        self.running = False
        self.profiler.stop()
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=25)
        header = (f"torch.profiler over optimizer steps {self.start_after + 1}..{self.start_after + self.steps} "
                  f"(the process's own thread; data-loading workers are other processes)\n")
        (self.out / "profile.txt").write_text(header + table + "\n")
