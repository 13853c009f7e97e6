"""Preemption: a warning signal stops the run at a step boundary with one consistent checkpoint.

Schedulers warn a job before they kill it: SLURM sends SIGUSR1 (`--signal=USR1@120`) or SIGTERM
(`KillWait` seconds before SIGKILL), Kubernetes and torchrun's agent send SIGTERM (the agent forwards
the one it gets to its workers, and SIGKILLs them after its shutdown timeout, 30 s by default). The
handler only notes the signal; the trainer asks `stop()` after every step, saves, and every process
exits with EXIT_PREEMPTED, which the SLURM script this project writes requeues (`fastssl launch slurm`).

Under torchrun every rank must stop after the same step: rank 0 writes the checkpoint from state that
every rank holds, so a rank one step further would continue a run the checkpoint does not describe.
The ranks therefore vote: one all-reduce (MAX) of a one-element flag per step, so a signal that
reached one process (or reached them at different steps) stops them all. On a GPU the vote of step
s is read after step s + 1 has been queued, when it is long done: reading it at once would wait for
step s's kernels and leave the GPU idle while the host queues the next step. A stop therefore comes
one step later there, the same step on every rank.

Forked DataLoader workers inherit the handler, so a signal sent to the whole process group (SLURM
signals every process of a job step) only sets a flag they never read, and they are not killed
before the main process has saved.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75   # EX_TEMPFAIL (sysexits.h): stopped to be run again, from the checkpoint it saved


class Preempted(RuntimeError):
    """The run stopped on a signal after saving its checkpoint; the message says how it continues."""


class PreemptionWatch:
    """Notes SIGTERM and SIGUSR1 while installed (`with`); `stop()` is the ranks' common verdict."""

    def __init__(self, world: int, device: torch.device):
        self.world, self.device = world, device
        self.received: str | None = None   # the first signal's name
        self._previous: dict[int, object] = {}
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def __enter__(self) -> "PreemptionWatch":
        # Python runs signal handlers in the main thread only; elsewhere (a notebook's worker thread)
        # the signals keep their default action.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def stop(self) -> bool:
        """Whether every rank stops after this step; called by every rank after every step."""
        if self.world == 1:
            return self.received is not None
        vote = torch.tensor([int(self.received is not None)], dtype=torch.int32, device=self.device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        if self.device.type != "cuda":
            return bool(vote)   # gloo's all-reduce has finished when it returns
        previous = self._pending
        event = torch.cuda.Event()
        self._pending = (vote.to("cpu", non_blocking=True), event)
        event.record()
        if previous is None:
            return False
        host, done = previous
        done.synchronize()      # the previous step's copy: finished while this step was queued
        return bool(host)
