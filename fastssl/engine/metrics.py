"""metrics.jsonl (one JSON object per logged event) and the live progress line."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from fastssl.loaders import atomic


# Fields of a metrics record that are wall-clock measurements: they differ between identical runs.
TIMING_KEYS = ("images_per_s", "step_ms", "data_wait_share")


class MetricsError(ValueError):
    """metrics.jsonl is corrupt where a checkpoint says it was complete; the message names the line."""


class MetricsLog:
    """Appends records to RUN/metrics.jsonl, flushed per line so a killed run keeps what it logged.

    `lines` counts the records written; a checkpoint stores it and a resume cuts the file back to it,
    so records logged after the checkpoint by the killed run are not duplicated. Those lines are not
    even parsed: the last of them may be torn by a kill or a full disk. A corrupt line before that
    count is an error. Non-finite numbers are written as null: the file is always valid JSON lines.
    With path None (ranks other than 0 under DDP) it only counts.
    """

    def __init__(self, path: Path | None, keep_lines: int | None = None):
        self.path = path
        if path is None:
            self.lines = keep_lines or 0
            return
        if keep_lines is None:
            self.lines = len(read_metrics(path)) if path.exists() else 0
            return
        text = path.read_text(errors="replace") if path.exists() else ""
        kept = text.splitlines(keepends=True)[:keep_lines]
        for number, line in enumerate(kept, 1):
            try:
                json.loads(line)
            except ValueError as e:
                raise MetricsError(f"{path}: line {number} is not JSON ({e}), but the checkpoint counts "
                                   f"{keep_lines} complete lines: the file was changed after it was written") from e
        if len(kept) < keep_lines:
            raise MetricsError(f"{path}: {len(kept)} lines, but the checkpoint counts {keep_lines}: lines were "
                               "removed after it was written")
        if "".join(kept) != text:
            atomic.write_text(path, "".join(line if line.endswith("\n") else line + "\n" for line in kept))
        self.lines = keep_lines

    def write(self, record: dict) -> None:
        if self.path is not None:
            line = json.dumps({k: _finite(v) for k, v in record.items()}, allow_nan=False)
            with open(self.path, "a") as f:
                f.write(line + "\n")
        self.lines += 1


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One status line: redrawn in place on a terminal, printed per update when piped to a log; silent
    with stream None (ranks other than 0 under DDP)."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=sys.stderr):
        self.total, self.start_step, self.stream = total_steps, start_step, stream
        self.t0 = time.perf_counter()
        self.tty = stream is not None and stream.isatty()

    def update(self, step: int, epoch: int, epochs: int, loss: float, lr: float, images_per_s: float) -> None:
        if self.stream is None:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done else float("inf")
        line = (f"epoch {epoch + 1}/{epochs} step {step}/{self.total} [{100 * step / self.total:3.0f}%] "
                f"loss {loss:.4f} lr {lr:.4g} {images_per_s:,.0f} img/s ETA {_clock(eta)}")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.stream is None:
            return
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()
