"""End-to-end training throughput per data backend, against the torchvision DataLoader baseline.

Each backend gets its own Trainer (same config, same seed, same model) in one process; timing
windows alternate between backends so drift in the machine's speed hits all of them alike. A window
is `steps` full training steps (load, augment, forward, backward, optimizer) ended by a device sync.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from fastssl.config import Config
from fastssl.task.builder import TaskBatch
from fastssl.engine.trainer import Trainer

from .harness import Row, context, device_slug, plot_bars, summarize, write_csv, write_markdown

BASELINE = "torchvision"


def _endless(trainer: Trainer) -> Iterator[TaskBatch]:
    """The run's tasks (task augmentation and query mixing included, as in training), epoch after epoch."""
    epoch, step = 0, 0
    while True:
        trainer.loader.set_epoch(epoch)
        for batch in trainer.loader:
            yield trainer.tasks.build(batch.views, batch.index, epoch, step)
            step += 1
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _window(trainer: Trainer, batches: Iterator, steps: int) -> float:
    """Images per second over `steps` training steps."""
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    _sync(trainer.device)
    return steps * trainer.cfg.loader.batch_size / (time.perf_counter() - start)


def measure(cfg: Config, backends: list[str], steps: int, windows: int, warmup: int,
            progress=print) -> list[Row]:
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {}
        for backend in backends:
            run_cfg = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, backend=backend))
            trainers[backend] = Trainer(run_cfg, Path(scratch) / backend)
        streams = {b: _endless(t) for b, t in trainers.items()}
        for backend, trainer in trainers.items():
            _window(trainer, streams[backend], warmup)
        samples: dict[str, list[float]] = {b: [] for b in backends}
        for w in range(windows):
            for backend, trainer in trainers.items():
                samples[backend].append(_window(trainer, streams[backend], steps))
            progress(f"window {w + 1}/{windows}: " + ", ".join(f"{b} {s[-1]:,.0f} img/s" for b, s in samples.items()))
        device = next(iter(trainers.values())).device
        precision = next(iter(trainers.values())).precision
        for trainer in trainers.values():
            trainer.close()   # their folders' locks (fit, which releases them itself, is not what runs here)
    where = context(device)
    shape = f"{cfg.loader.views}x{cfg.loader.batch_size}x{cfg.data.image_size}px {cfg.model.arch} w{cfg.model.width}"
    return [Row("train_throughput", backend, shape, precision, "train step", "images/s", *summarize(s),
                unit="img/s", **where) for backend, s in samples.items()]


def write_all(rows: list[Row], out_dir: Path) -> list[Path]:
    """CSV, Markdown and PNG named after the device, so CPU and GPU results sit side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"train_throughput_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    title = "Training throughput by data backend"
    write_markdown(rows, paths[1], title, BASELINE)
    plot_bars(rows, paths[2], title)
    return paths
