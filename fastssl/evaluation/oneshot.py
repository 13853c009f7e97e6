"""One-shot protocol of Lake et al. (2015): Omniglot's 20 classification runs (all_runs.zip).

In each run every test drawing takes the class of its nearest training drawing (one drawing per class)
in the frozen features h: by cosine similarity (metric=cosine, the default) or Euclidean distance
(metric=euclidean). A run's error rate is wrong / test drawings; the score is the mean over the runs, as
published, with each run's rate beside it. The identity "encoder" through the same code path (flattened,
normalised pixels at data.image_size) gives the raw-pixel baseline, reported next to the encoder's so a
score can be placed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from fastssl.config import ConfigError
from fastssl.evaluation.features import Progress, Run, data_tag, encode, stderr_progress
from fastssl.loaders.datasets import ArrayDataset
from fastssl.loaders.rules import choices
from fastssl.loaders.datasets.omniglot import OneShotRun, load_oneshot_runs
from fastssl.loaders.factory import build_eval_batches

Metric = Literal["cosine", "euclidean"]
METRICS = choices(Metric)


@dataclass
class Settings:
    runs: str = ""          # all_runs.zip or its extracted folder
    metric: Metric = "cosine"

    def __post_init__(self):
        """Checked when the options are parsed: before any checkpoint or data is read."""
        if not self.runs:
            raise ConfigError("oneshot: runs is required: --opt runs=PATH/all_runs.zip (or its folder)")


def result_tag(settings: Settings) -> str:
    """The runs are never the run's own data: the result file is named by them."""
    return data_tag(Path(settings.runs).stem, str(Path(settings.runs).resolve()))


def nearest(training: torch.Tensor, test: torch.Tensor, metric: str) -> torch.Tensor:
    """(Q,) index of each test row's nearest training row."""
    if metric == "cosine":
        training, test = (torch.nn.functional.normalize(x.double(), dim=1) for x in (training, test))
        return (test @ training.T).argmax(dim=1)
    return torch.cdist(test.double(), training.double()).argmin(dim=1)


def error_rates(run: Run, encoder: nn.Module, runs: list[OneShotRun], metric: str) -> tuple[dict, int]:
    """({run name: error rate}, feature dim): every run's drawings encoded in one pass, then scored."""
    images = np.concatenate([x for r in runs for x in (r.training, r.test)])
    batches = build_eval_batches(run.cfg.load_settings(), ArrayDataset(images, np.zeros(len(images))), run.device)
    features, _ = encode(encoder, batches, run.autocast)
    rates, start = {}, 0
    for r in runs:
        training = features[start:start + len(r.training)]
        test = features[start + len(r.training):start + len(r.training) + len(r.test)]
        start += len(r.training) + len(r.test)
        wrong = (nearest(training, test, metric).cpu().numpy() != r.truth).sum()
        rates[r.name] = float(wrong / len(r.test))
    return rates, features.shape[1]


def evaluate(run: Run, settings: Settings, progress: Progress = stderr_progress) -> tuple[dict, dict, str]:
    tick = time.perf_counter()
    runs = load_oneshot_runs(settings.runs)
    results = {"runs": len(runs), "metric": settings.metric, "image_size": run.cfg.data.image_size}
    for name, encoder in (("encoder", run.encoder), ("raw_pixels", nn.Flatten())):
        rates, dim = error_rates(run, encoder, runs, settings.metric)
        results[name] = {"mean_error": float(np.mean(list(rates.values()))), "feature_dim": dim, "per_run": rates}
        progress(f"oneshot: {name}, {len(runs)} runs, {dim} dims: mean error {results[name]['mean_error']:.4f}")
    used = {"runs": str(Path(settings.runs).resolve()), "metric": settings.metric}
    return used, results, (f"oneshot {len(runs)} runs, {settings.metric}: error encoder "
                           f"{results['encoder']['mean_error']:.4f}, raw pixels "
                           f"{results['raw_pixels']['mean_error']:.4f} in {time.perf_counter() - tick:.1f}s")
