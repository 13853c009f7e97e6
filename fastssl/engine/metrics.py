"""metrics.jsonl: one JSON object per logged event."""
from __future__ import annotations

import json
import math
from pathlib import Path

from fastssl.loaders import atomic


# Fields of a metrics record that are wall-clock measurements: they differ between identical runs.
TIMING_KEYS = ("images_per_s", "step_ms", "data_wait_share")


class MetricsError(ValueError):
    """metrics.jsonl is corrupt where a checkpoint says it was complete; the message names the line."""


class MetricsLog:
    """Appends records to RUN/metrics.jsonl, flushed per line so a killed run keeps what it logged.

    A line is appended whole or not at all (loaders/atomic.py's append_bytes): a full disk is a
    NoSpaceError that leaves the file as it was. `lines` counts the records written; a checkpoint
    stores it and a resume cuts the file back to it, so records logged after the checkpoint by the
    killed run are not duplicated. Those lines are not even parsed: the last of them may be torn by a
    kill mid-write. A corrupt line before that count is an error. Non-finite numbers are written as
    null: the file is always valid JSON lines. With path None (ranks other than 0 under DDP) it only
    counts. An attached sink (TensorBoard) gets each record as written, after the line is in the file.
    """

    def __init__(self, path: Path | None, keep_lines: int | None = None):
        self.path, self.sink = path, None
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
            record = {k: _finite(v) for k, v in record.items()}
            atomic.append_bytes(self.path, (json.dumps(record, allow_nan=False) + "\n").encode())
            if self.sink is not None:
                self.sink.write(record)
        self.lines += 1

    def attach(self, sink) -> None:
        """Mirror every record from now on into `sink`. Its reader drops what an earlier run logged at or
        past `sink.start_step` (a killed run's records after its checkpoint), so the kept records there
        are written to it again first."""
        kept = read_metrics(self.path) if self.path.exists() else []
        for record in kept:
            if record["step"] >= sink.start_step:
                sink.write(record)
        self.sink = sink

    def close(self) -> None:
        """Stops mirroring into the sink; nothing is held open (lines and events are written whole as they come)."""
        self.sink = None


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
