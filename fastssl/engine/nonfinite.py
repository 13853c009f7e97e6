"""The non-finite guard: a NaN or infinite loss stops the run (or skips its step), and is never saved.

A diverged run used to go on silently: NaN weights overwrote the last finite checkpoint and the run
exited 0. In `stop` mode the guard only records, on the device, the first step whose loss was not
finite (no host sync in the hot path); the trainer reads it where it syncs anyway, at each log step,
and before every save, and stops with the step and the last good checkpoint named; before a save it also checks the weights,
which an update can overflow a step before the loss shows it. In `skip_step`
mode the step's update is dropped, as GradScaler drops an fp16 step with infinite gradients: that
needs the verdict before the update, one host read per step, the price of the mode. The forward
itself changes state before the verdict (BatchNorm's running statistics and batch counters, in the
online network and in a momentum network run under no_grad), so in that mode the buffers are copied
before the forward (`Buffers`) and put back when the step is dropped: a NaN batch leaves no trace.
"""
from __future__ import annotations

import torch


class NonFiniteError(RuntimeError):
    """The loss was NaN or infinite; the message names the step and what is safe on disk."""


class Buffers:
    """Every buffer of `modules`, copied now so that `restore` can undo what a forward pass wrote into
    them. A copy per step, of state that is small next to the weights (BatchNorm statistics; a
    queue, where a method keeps one)."""

    def __init__(self, modules):
        self.saved = [(live, live.detach().clone()) for module in modules for live in module.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in self.saved:
            live.copy_(saved)


class NonFiniteGuard:
    def __init__(self, mode: str, max_skipped: int, device: torch.device, skipped: int = 0):
        self.mode, self.max_skipped, self.skipped = mode, max_skipped, skipped
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def protect(self, modules) -> Buffers | None:
        """In skip_step mode, the buffers of `modules` before the step's forward (restored if the step is
        dropped); None in stop mode, which never drops a step."""
        return Buffers(modules) if self.mode == "skip_step" else None

    def admit(self, loss: torch.Tensor, step: int) -> bool:
        """Whether step `step` (0-based) may update the model with `loss`."""
        bad = ~torch.isfinite(loss.detach())
        if self.mode == "skip_step":
            if not bool(bad):
                return True
            self.skipped += 1
            if self.skipped > self.max_skipped:
                raise NonFiniteError(f"the loss was not finite at step {step + 1}, the {self.skipped}th skipped "
                                     f"step: more than train.max_skipped_steps={self.max_skipped}")
            return False
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        return True

    def check_weights(self, modules, step: int, last_good: str) -> None:
        """Raise if any floating tensor of `modules` is NaN or infinite: an update can overflow the
        weights a step before the loss shows it. One host read, made before a save."""
        flags = [torch.isfinite(t).all() for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        if flags and not bool(torch.stack(flags).all()):
            raise NonFiniteError(f"the weights became non-finite by step {step} (train.on_nonfinite="
                                 f"{self.mode}); they were not saved; {last_good}")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state["skipped"]

    def check(self, last_good: str) -> None:
        """Raise if a loss since the start was not finite (a host read of one flag)."""
        first = int(self.first_bad)
        if first >= 0:
            raise NonFiniteError(f"the loss became non-finite at step {first + 1} (train.on_nonfinite=stop); "
                                 f"nothing after it was saved; {last_good}")
