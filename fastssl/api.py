"""The Python API: train, load and embed with the same runs, files and errors as the `fastssl` command.

    run = fastssl.train(out="runs/a", data="my_images", model="torchvision/resnet18", method="simclr",
                        settings={"train.epochs": 10})
    run.knn_top1, run.metrics, run.encoder()
    fastssl.features(fastssl.load("runs/a"), "more_images").values     # (N, D) numpy

`fastssl train` is this module's `train_config` with the command line's config; a config error is a
`fastssl.ConfigError`, bad data a `fastssl.DataError`, with the command's one-line messages.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fastssl import config as config_mod

if TYPE_CHECKING:   # imported where used: `fastssl train`'s config errors answer before torch loads
    import numpy as np
    from torch import nn

PathLike = str | os.PathLike
CHECKPOINT = "last.pt"


@dataclass
class Run:
    """A run directory and what it holds: `dir`, `config`, `knn_top1` (None where the run has no labelled
    data to score), `metrics` (metrics.jsonl's records), `encoder()` (the trained encoder, eval mode)."""

    dir: Path
    config: config_mod.Config
    knn_top1: float | None
    module: nn.Module | None = None   # the user's network, for model.arch=module
    summary: str = ""                 # the result line `fastssl train` prints (a run trained by this process)

    @property
    def metrics(self) -> list[dict]:
        from fastssl.engine.metrics import read_metrics
        return read_metrics(self.dir / "metrics.jsonl")

    def encoder(self) -> nn.Module:
        """The encoder f of the run's last checkpoint, on the CPU in eval mode: images -> features h."""
        from fastssl.trained_run import load_trained
        return load_trained(self.dir / CHECKPOINT, module=self._fresh_module()).model.encoder.eval()

    def _fresh_module(self) -> nn.Module | None:
        import copy
        return None if self.module is None else copy.deepcopy(self.module)


@dataclass
class Features:
    """The encoder's features of a dataset's images, in the dataset's order: `values` (N, D) float32,
    `labels` (N,) int64 (all 0 for unlabelled images) and `paths` (the files, where the images are files)."""

    values: np.ndarray
    labels: np.ndarray
    paths: list[Path] | None


def build_config(data: PathLike | None = None, model: str | nn.Module | None = None, method: str | None = None,
                 settings: dict[str, Any] | None = None, config: PathLike | Sequence[PathLike] | None = None,
                 overrides: Sequence[str] = ()) -> config_mod.Config:
    """The run config: defaults, `config` file(s), then the arguments (data: a folder of images nested any
    way, or a list file, read without labels as data.dataset=images), then `settings` (which may name
    another dataset for data.path, e.g. {"data.dataset": "imagefolder"}), then `overrides` (`--set` strings)."""
    given: dict[str, Any] = {}
    if data is not None:
        given.update({"data.dataset": "images", "data.path": str(data)})
    if model is not None:
        given["model.arch"] = model if isinstance(model, str) else config_mod.USER_MODULE
    if method is not None:
        given["method.name"] = method
    return config_mod.load_config(config, overrides, {**given, **(settings or {})})


def train(out: PathLike | None = None, data: PathLike | None = None, model: str | nn.Module | None = None,
          method: str | None = None, settings: dict[str, Any] | None = None,
          config: PathLike | Sequence[PathLike] | None = None, resume: bool = False,
          accept_data_change: bool = False) -> Run:
    """Train a run into `out` (None: a new runs/<date-time>) and return it; `resume=True` continues the run
    in `out` from its checkpoint with its saved config (pass `model` again for a user's nn.Module), on the
    training data it was trained on unless `accept_data_change`. Raises Preempted (fastssl.engine.preemption)
    after saving when SIGTERM or SIGUSR1 stops it."""
    module = None if model is None or isinstance(model, str) else model
    if resume:
        if out is None or data is not None or method is not None or settings or config \
                or (model is not None and module is None):
            raise config_mod.ConfigError("resume=True continues a run with its saved config: it takes out= (and a "
                                         "user's model=nn.Module) only")
        cfg = saved_config(out, "resume")
    else:
        cfg = build_config(data, model, method, settings, config)
    return train_config(cfg, Path(out) if out is not None else None, resume, module,
                        accept_data_change=accept_data_change)


def saved_config(run_dir: PathLike, what: str) -> config_mod.Config:
    """RUN/config.yaml, the config a run continues with; ConfigError naming `what` (the argument) otherwise."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise config_mod.ConfigError(f"{what} {str(run_dir)!r}: not a run directory (no config.yaml)")
    return config_mod.load_config(saved)


def train_config(cfg: config_mod.Config, out: Path | None, resume: bool = False, module: nn.Module | None = None,
                 announce=None, accept_data_change: bool = False) -> Run:
    """Train `cfg` into `out`; `announce(line)` hears the run directory once it is claimed (on rank 0)."""
    from fastssl.engine.trainer import Trainer   # after validation: a bad config fails in milliseconds

    trainer = Trainer(cfg, out, resume=resume, module=module, accept_data_change=accept_data_change)
    if announce is not None and trainer.dist.is_main:
        announce(f"run directory: {trainer.out_dir}")
    result = trainer.fit()
    return Run(trainer.out_dir, cfg, None if result.knn_off else result.knn_top1, module,
               result.summary() if result.is_main else "")


def load(run_dir: PathLike, model: nn.Module | None = None) -> Run:
    """A finished (or checkpointed) run; `model`: a fresh instance of the user's network, for a run of one."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir, "run")
    if not (run_dir / CHECKPOINT).is_file():
        raise config_mod.ConfigError(f"run {str(run_dir)!r}: holds no {CHECKPOINT} (it stopped before its first "
                                     "checkpoint)")
    run = Run(run_dir, cfg, None, model)
    scores = [r["knn_top1"] for r in run.metrics if r.get("knn_top1") is not None]
    run.knn_top1 = scores[-1] if scores and not math.isnan(scores[-1]) else None
    return run


def features(run: Run | PathLike, data: PathLike | None = None, split: str = "train") -> Features:
    """The encoder's features h of `data` (a folder of images nested any way, or a list file; None: the run's
    own data, `split` of it), on the run's device, in the dataset's order."""
    from fastssl.evaluation.features import load_run, split_features

    run = run if isinstance(run, Run) else load(run)
    overrides = [] if data is None else ["data.dataset=images", f"data.path={Path(data).resolve()}"]
    if data is not None:
        split = "train"   # an unlabelled folder is one split
    loaded = load_run(run.dir / CHECKPOINT, overrides, module=run._fresh_module())
    values, labels = split_features(loaded, split, progress=lambda line: None)
    dataset = loaded.dataset(split)
    paths = list(dataset.paths) if hasattr(dataset, "paths") else None
    return Features(values.float().cpu().numpy(), labels.cpu().numpy(), paths)
