"""TensorBoard event files mirroring metrics.jsonl (`log.tensorboard: true`), to watch a run live.

metrics.jsonl stays the record of a run: MetricsLog feeds each record it writes to TensorBoardSink,
which appends the record's numbers as one event of scalars at its step, in TensorBoard's format (the
tensorboard package's Event message and record framing). The sink writes its file itself, through
loaders/atomic.py's append_bytes, rather than through torch's SummaryWriter: that writer's background
thread meets a full disk with a printed traceback and a torn record, where append_bytes raises the
one-line NoSpaceError and leaves the file as it was. The tensorboard package is optional, so it is
imported only for a run that asks for it.
"""
from __future__ import annotations

import io
import itertools
import math
import os
import socket
import time
from pathlib import Path

from fastssl.config import ConfigError
from fastssl.engine.metrics import TIMING_KEYS
from fastssl.loaders import atomic

LOG_DIR = "tensorboard"            # under the run directory
COORDINATES = ("step", "epoch")    # where a record sits, not what it measured


def require() -> tuple[type, type]:
    """tensorboard's Event message and RecordWriter (the event file's framing); without the tensorboard
    package, a ConfigError naming the key, so that a run fails at start-up rather than at its first log."""
    try:
        import tensorboard  # noqa: F401  (the package itself: its submodules' imports may be answered from a cache)
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as e:
        raise ConfigError(f"log.tensorboard=True: needs the tensorboard package, which cannot be imported ({e}): "
                          "pip install fastssl[tensorboard]") from None
    return Event, RecordWriter


def scalars(record: dict) -> dict[str, float]:
    """A record's numbers by tag: `timing/<key>` for the wall-clock measurements, `train/<key>` for the
    rest of a training interval's record (the one with a `loss`), `eval/<key>` for any other record's
    (an evaluation: `eval/knn_top1`). The coordinates, nulls (non-finite values), booleans and
    strings are left out."""
    group = "train" if "loss" in record else "eval"
    return {f"{'timing' if key in TIMING_KEYS else group}/{key}": float(value) for key, value in record.items()
            if key not in COORDINATES and _finite_number(value)}


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_FILES = itertools.count()   # tells apart the event files that one process starts within a second


class TensorBoardSink:
    """Appends records' scalars to an event file of its own in RUN/tensorboard/, one event per record,
    each in the file as soon as it is written, so a live TensorBoard shows it.

    `start_step` is the step the run starts or resumes from: the file begins with a restart marker
    at it (as SummaryWriter's purge_step writes), and TensorBoard's reader drops the directory's
    events at or past it that came before, those a killed run logged after the checkpoint this run
    resumes; a fresh run (step 0) drops everything an earlier attempt in the same directory left.
    """

    def __init__(self, run_dir: Path, start_step: int):
        self.start_step = start_step
        self._event, self._framing = require()
        folder = Path(run_dir) / LOG_DIR
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard's file name: the reader takes a directory's files in name order.
        self.path = folder / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                              f"{next(_FILES)}")
        restart = self._event(step=start_step)
        restart.session_log.status = restart.session_log.START
        self._append(self._event(step=start_step, file_version="brain.Event:2"), restart)

    def write(self, record: dict) -> None:
        event = self._event(step=record["step"])
        for tag, value in scalars(record).items():
            event.summary.value.add(tag=tag, simple_value=value)
        if event.summary.value:
            self._append(event)

    def _append(self, *events) -> None:
        """The events, framed as TensorBoard's reader expects, appended whole or not at all."""
        data = io.BytesIO()
        records = self._framing(data)
        for event in events:
            event.wall_time = time.time()
            records.write(event.SerializeToString())
        atomic.append_bytes(self.path, data.getvalue())
