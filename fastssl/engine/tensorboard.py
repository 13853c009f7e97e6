"""TensorBoard event files mirroring metrics.jsonl (`log.tensorboard: true`), to watch a run live.

metrics.jsonl stays the record of a run: MetricsLog feeds each record it writes to TensorBoardSink,
which writes the record's numbers as scalars at its step. The tensorboard package is optional, so
torch's writer, which needs it, is imported only for a run that asks for it.
"""
from __future__ import annotations

import math
from pathlib import Path

from fastssl.config import ConfigError
from fastssl.engine.metrics import TIMING_KEYS

LOG_DIR = "tensorboard"            # under the run directory
COORDINATES = ("step", "epoch")    # where a record sits, not what it measured


def require() -> type:
    """torch's SummaryWriter; without the tensorboard package, a ConfigError naming the key, so that a
    run fails at start-up rather than at its first log."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(f"log.tensorboard=True: needs the tensorboard package, which cannot be imported ({e}): "
                          "pip install fastssl[tensorboard]") from None
    return SummaryWriter


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


class TensorBoardSink:
    """Writes records' scalars to RUN/tensorboard/, flushed per record so a live TensorBoard shows them.

    `start_step` is the step the run starts or resumes from: the writer marks it as a restart
    (SummaryWriter's purge_step), and TensorBoard's reader drops the directory's events at or past it
    that came before, those a killed run logged after the checkpoint this run resumes; a fresh run
    (step 0) drops everything an earlier attempt in the same directory left.
    """

    def __init__(self, run_dir: Path, start_step: int):
        self.start_step = start_step
        self.writer = require()(str(Path(run_dir) / LOG_DIR), purge_step=start_step)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
