"""End-to-end training throughput per data backend, against the torchvision DataLoader baseline.

Each backend gets its own Trainer (same config, same seed, same model) in one process; timing
windows alternate between backends so drift in the machine's speed hits all of them alike. A window
is `steps` full training steps (load, augment, forward, backward, optimizer) ended by a device sync.
Given several models (`--model`), every backend trains every model, each pair a Trainer of its own in
the same alternation, and the rows are compared with the first model's row.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
import yaml

from fastssl.config import ARCHS, Config, ModelConfig
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


def model_label(model: ModelConfig) -> str:
    """A --model row's network: the arch, the width of fastssl's ResNets (the only ones it applies to)
    and the constructor's kwargs as YAML, e.g. `timm/vit_small_patch16_224 {img_size: 32, patch_size: 4}`."""
    width = f" w{model.width}" if model.arch in ARCHS else ""
    kwargs = yaml.safe_dump(model.kwargs, default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    return model.arch + width + (f" {kwargs}" if model.kwargs else "")


def measure(cfg: Config, backends: list[str], steps: int, windows: int, warmup: int,
            progress=print, models: list[Config] | None = None) -> list[Row]:
    """Rows per backend (labelled by the backend; the shape names cfg's model) or, given `models`
    (configs that differ from cfg in their model), per model and backend, labelled `backend model`."""
    runs = {}
    for run_cfg in models or [cfg]:
        for backend in backends:
            label = f"{backend} {model_label(run_cfg.model)}" if models else backend
            runs[label] = dataclasses.replace(run_cfg, loader=dataclasses.replace(run_cfg.loader, backend=backend))
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {label: Trainer(run_cfg, Path(scratch) / str(i)) for i, (label, run_cfg) in enumerate(runs.items())}
        streams = {b: _endless(t) for b, t in trainers.items()}
        for label, trainer in trainers.items():
            _window(trainer, streams[label], warmup)
        samples: dict[str, list[float]] = {b: [] for b in trainers}
        for w in range(windows):
            for label, trainer in trainers.items():
                samples[label].append(_window(trainer, streams[label], steps))
            progress(f"window {w + 1}/{windows}: " + ", ".join(f"{b} {s[-1]:,.0f} img/s" for b, s in samples.items()))
        device = next(iter(trainers.values())).device
        precision = next(iter(trainers.values())).precision
        for trainer in trainers.values():
            trainer.close()   # their folders' locks (fit, which releases them itself, is not what runs here)
    where = context(device)
    shape = f"{cfg.loader.views}x{cfg.loader.batch_size}x{cfg.data.image_size}px"
    shape += "" if models else f" {cfg.model.arch} w{cfg.model.width}"
    return [Row("train_throughput", label, shape, precision, "train step", "images/s", *summarize(s),
                unit="img/s", **where) for label, s in samples.items()]


def write_all(rows: list[Row], out_dir: Path, by_model: bool = False) -> list[Path]:
    """CSV, Markdown and PNG named after the device, so CPU and GPU results sit side by side. Rows
    per model (`by_model`) go to train_backbones_*, compared with the first model's row on the
    torchvision baseline (or, without it, on the first backend)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{'train_backbones' if by_model else 'train_throughput'}_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    title = "Training throughput by backbone and data backend" if by_model else "Training throughput by data backend"
    baseline = (next((r.provider for r in rows if r.provider.split(" ")[0] == BASELINE), rows[0].provider)
                if by_model else BASELINE)
    write_markdown(rows, paths[1], title, baseline)
    plot_bars(rows, paths[2], title)
    return paths
