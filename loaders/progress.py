"""Progress of long work (training, feature extraction, passes over files), on tqdm: on a terminal one
bar redrawn in place; on a file or a pipe a plain line now and then, never a stream of carriage returns.

tqdm is the one progress library of the project (FFCV's writer draws its conversion bar with it too).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterator, TextIO

from tqdm import tqdm

Progress = Callable[[int, int], None]   # (done, total): what a pass over files reports
LOG_EVERY_S = 10.0                      # a redirected stream gets a line this often, and one at the end


class ProgressBar:
    """`update(done, status)` moves the work to `done` of `total`; `message` prints a line above it.

    On a terminal: tqdm's bar with its rate and ETA, `status` as its postfix. Elsewhere: the line
    `what: done/total unit [pct%] status rate ETA` for an update that comes `every_s` seconds after the
    last line (0: every update) and always for the last one. Silent when not `enabled` (ranks other
    than 0 under torchrun). Close it (or use it as a context manager) before printing a result, so
    the result is the last line on the terminal.
    """

    def __init__(self, what: str, total: int = 0, unit: str = "files", initial: int = 0,
                 every_s: float = LOG_EVERY_S, stream: TextIO | None = None, enabled: bool = True):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.stream = (stream or sys.stderr) if enabled else None
        self.initial, self.start = initial, time.monotonic()
        self.last_line = self.start
        self.bar = None
        if self.stream is not None and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=what, unit=f" {unit}", file=self.stream,
                            dynamic_ncols=True, leave=True)

    def update(self, done: int, status: str = "") -> None:
        if self.stream is None:
            return
        if self.bar is not None:
            if status:
                self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done >= self.total or now - self.last_line >= self.every_s:
            self.last_line = now
            self.stream.write(self._line(done, status, now - self.start) + "\n")
            self.stream.flush()

    def _line(self, done: int, status: str, elapsed: float) -> str:
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = tqdm.format_interval((self.total - done) / rate) if rate > 0 else "?"
        percent = 100 * done / self.total if self.total else 100.0
        return " ".join(part for part in (f"{self.what}: {done:,}/{self.total:,} {self.unit} [{percent:3.0f}%]",
                                           status, f"{rate:,.1f} {self.unit}/s ETA {eta}") if part)

    def __call__(self, done: int, total: int) -> None:
        """The `Progress` protocol of the passes over files, whose total is known once they start."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
        self.update(done)

    def message(self, text: str) -> None:
        if self.stream is None:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tracked(items, what: str, unit: str) -> Iterator:
    """The items of a sized iterable (batches of a split), with a bar that moves as they are consumed."""
    with ProgressBar(what, len(items), unit=unit) as bar:
        for done, item in enumerate(items, 1):
            yield item
            bar.update(done)
