"""kNN protocol: the training-time monitor (fastssl.engine.knn) on the frozen encoder's features.

Weighted vote exp(cos / T) over the k nearest train images (L2-normalised h), test top-1. With the run's
own knn.k and knn.temperature it reproduces the monitor's final number.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fastssl.engine.knn import knn_predict
from fastssl.config import ConfigError
from fastssl.evaluation.features import Progress, Run, accuracy, split_features, stderr_progress


@dataclass
class Settings:
    k: int = 0                 # 0: the run's knn.k
    temperature: float = 0.0   # 0: the run's knn.temperature


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int, temperature: float) -> float:
    """Top-1 of the weighted kNN vote, features L2-normalised here."""
    bank = torch.nn.functional.normalize(train_x.float(), dim=1)
    queries = torch.nn.functional.normalize(test_x.float(), dim=1)
    return accuracy(knn_predict(bank, train_y, queries, num_classes, k, temperature), test_y)


def evaluate(run: Run, settings: Settings, progress: Progress = stderr_progress) -> tuple[dict, dict, str]:
    tick = time.perf_counter()
    k = settings.k or run.cfg.knn.k
    temperature = settings.temperature or run.cfg.knn.temperature
    if k < 1 or not temperature > 0:
        raise ConfigError(f"knn: k={k}, temperature={temperature}: need k >= 1 and temperature > 0")
    train_x, train_y = split_features(run, "train", progress)
    test_x, test_y = split_features(run, "test", progress)
    top1 = knn_accuracy(train_x, train_y, test_x, test_y, run.num_classes(), k, temperature)
    used = {"k": k, "temperature": temperature, "effective_k": min(k, len(train_y))}
    results = {"top1": top1, "num_train": len(train_y), "num_test": len(test_y)}
    return used, results, f"knn top1={top1:.4f} (k={k}, T={temperature:g}) in {time.perf_counter() - tick:.1f}s"
