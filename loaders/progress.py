"""Progress of a long pass over files (indexing, checking): a bar on a terminal, a line now and then in a log."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

Progress = Callable[[int, int], None]   # (done, total)
LOG_EVERY_S = 10.0                      # a redirected stream gets a line this often, and one at the end


class ProgressBar:
    """Call with (done, total). On a terminal, one redrawn bar with the rate; otherwise a line at most
    every LOG_EVERY_S seconds and the last one, so a log file is not flooded by a million updates."""

    def __init__(self, what: str, stream: TextIO | None = None):
        self.what, self.stream = what, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.tty = self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        rate = done / max(now - self.start, 1e-9)
        if self.tty:
            bar = "#" * (30 * done // max(total, 1))
            print(f"\r{self.what}: [{bar:<30}] {done:,}/{total:,} files, {rate:,.0f}/s",
                  end="\n" if done == total else "", file=self.stream, flush=True)
        elif done == total or now - self.last >= LOG_EVERY_S:
            self.last = now
            print(f"{self.what}: {done:,}/{total:,} files, {rate:,.0f}/s", file=self.stream, flush=True)
