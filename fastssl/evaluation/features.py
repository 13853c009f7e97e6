"""What every protocol shares: the run a checkpoint belongs to, the frozen encoder's features, the JSON.

`load_run` reads RUN/config.yaml (plus `--set` overrides) and the encoder weights of RUN/<ckpt> through
fastssl.trained_run; `split_features` computes h = f(x), the encoder output
(not the projection), once per split, on unaugmented, normalised images (build_eval_batches).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fastssl import config as config_mod
from fastssl.engine.knn import extract_features
from fastssl.engine.precision import autocast, resolve_device, resolve_precision
from fastssl.loaders.datasets import build_dataset
from fastssl.loaders import atomic
from fastssl.loaders.factory import build_eval_batches
from fastssl.loaders.progress import tracked
from fastssl.trained_run import load_trained

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Run:
    """A trained run, ready to evaluate: its config, directory, encoder (eval mode) and device."""
    cfg: config_mod.Config
    run_dir: Path
    ckpt: Path
    step: int
    encoder: nn.Module
    device: torch.device
    precision: str
    overrides: list[str] = field(default_factory=list)
    data_tag: str | None = None   # None: the data the run trained on; else names the data `--set` chose
    _datasets: dict = field(default_factory=dict, repr=False)
    _features: dict = field(default_factory=dict, repr=False)

    def autocast(self):
        return autocast(self.precision, self.device)

    def dataset(self, split: str):
        if split not in self._datasets:
            self._datasets[split] = build_dataset(self.cfg.data, split)
        return self._datasets[split]

    def num_classes(self) -> int:
        train = self.dataset("train")
        return len(train.classes) or int(train.labels.max()) + 1


def load_run(ckpt: str | Path, overrides: list[str] = (), module: nn.Module | None = None) -> Run:
    """The run of checkpoint `ckpt` (RUN/last.pt): config from RUN/config.yaml with `overrides` applied
    (`module`: a fresh instance of the user's network, for a run of model.arch=module)."""
    trained = load_trained(ckpt, overrides, module)
    cfg, ckpt = trained.cfg, trained.ckpt
    own = config_mod.load_config(ckpt.parent / "config.yaml").data
    tag = None if cfg.data == own else data_tag(cfg.data.dataset, json.dumps(
        {**dataclasses.asdict(cfg.data), "path": cfg.data.path and str(Path(cfg.data.path).resolve())},
        sort_keys=True))
    device = resolve_device(cfg.train.device)
    encoder = trained.model.encoder.to(device).eval()
    return Run(cfg=cfg, run_dir=ckpt.parent, ckpt=ckpt, step=int(trained.state["run"]["step"]), encoder=encoder,
               device=device, precision=resolve_precision(cfg.train.precision, device),
               overrides=list(overrides), data_tag=tag)


def data_tag(name: str, identity: str) -> str:
    """`name-<8 hex>`: a readable, file-name-safe label of evaluated data, stable for the same identity
    (e.g. a resolved path), so results on different data do not overwrite each other."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "data"
    return f"{slug}-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def encode(encoder: nn.Module, batches, autocast_ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw float32 features h = encoder(x) (not normalised) and labels of every image `batches` yields."""
    return extract_features(encoder, batches, autocast_ctx, normalize=False)


def split_features(run: Run, split: str, progress: Progress = stderr_progress
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,) int64) of a split, on the run's device; computed once."""
    if split not in run._features:
        tick = time.perf_counter()
        batches = tracked(build_eval_batches(run.cfg.load_settings(), run.dataset(split), run.device),
                          f"features: {split} split", "batches")
        run._features[split] = encode(run.encoder, batches, run.autocast)
        n, d = run._features[split][0].shape
        progress(f"features: {split} split, {n} images x {d} dims in {time.perf_counter() - tick:.1f}s")
    return run._features[split]


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean())


def write_result(run: Run, protocol: str, settings: dict, results: dict, seconds: float,
                 extra: dict | None = None, tag: str | None = None) -> Path:
    """RUN/eval_<protocol>.json on the run's own data, RUN/eval_<protocol>_<tag>.json on other data
    (`tag`, else run.data_tag): the numbers, the settings, and what was evaluated."""
    record = {"protocol": protocol, "checkpoint": str(run.ckpt), "step": run.step,
              "dataset": run.cfg.data.dataset, "data_path": run.cfg.data.path, "overrides": run.overrides,
              "device": str(run.device), "precision": run.precision, "settings": settings,
              "results": results, "seconds": round(seconds, 3), **(extra or {})}
    tag = tag or run.data_tag
    path = run.run_dir / (f"eval_{protocol}_{tag}.json" if tag else f"eval_{protocol}.json")
    atomic.write_text(path, json.dumps(record, indent=2) + "\n")
    return path
