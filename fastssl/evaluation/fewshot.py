"""Few-shot protocol: N-way K-shot episodes on the frozen, L2-normalised features of the test split.

An episode draws N distinct classes, then K + Q distinct images of each (K support, Q queries), from a
seeded numpy generator. Two classifiers per episode: prototypes (nearest class mean of the support, by
Euclidean distance) and ridge regression (fastssl.kernels.ridge_solve from the support features to
one-hot labels; the query's class is the argmax of q W). Reported: mean accuracy over episodes and the
95% interval half-width 1.96 * std / sqrt(episodes) (std over episodes, ddof=0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fastssl.config import ConfigError
from fastssl.evaluation.features import Progress, Run, split_features, stderr_progress
from fastssl.kernels import ridge_solve


@dataclass
class Settings:
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 600
    ridge_lambda: float = 1.0
    seed: int = 0
    split: str = "test"
    chunk: int = 100           # episodes per batched solve


def sample_episodes(labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(support (E, ways, shots), query (E, ways, queries)) sample indices; class order within an
    episode is its label order 0..ways-1. Only classes with at least shots + queries samples are drawn."""
    labels = np.asarray(labels)
    per_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = np.array(sorted(c for c, idx in per_class.items() if len(idx) >= shots + queries))
    if min(ways, shots, queries, episodes) < 1:
        raise ConfigError(f"fewshot: ways={ways} shots={shots} queries={queries} episodes={episodes}: "
                         "each must be >= 1")
    if len(eligible) < ways:
        raise ConfigError(f"fewshot: {ways}-way {shots}-shot with {queries} queries needs {ways} classes of at "
                         f"least {shots + queries} images; the split has {len(eligible)}")
    rng = np.random.default_rng(seed)
    picked = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(eligible, ways, replace=False)):
            picked[e, w] = rng.choice(per_class[int(c)], shots + queries, replace=False)
    return picked[:, :, :shots], picked[:, :, shots:]


def prototype_predict(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """support (E, N, K, D), query (E, M, D) -> (E, M) index of the nearest class mean."""
    prototypes = support.mean(dim=2)
    return torch.cdist(query, prototypes).argmin(dim=2)


def ridge_predict(support: torch.Tensor, query: torch.Tensor, lam: float) -> torch.Tensor:
    """support (E, N, K, D), query (E, M, D) -> (E, M): argmax of q W, W = ridge(support -> one-hot)."""
    episodes, ways, shots, dim = support.shape
    x = support.reshape(episodes, ways * shots, dim)
    y = torch.eye(ways, dtype=x.dtype, device=x.device).repeat_interleave(shots, dim=0).expand(episodes, -1, -1)
    impl = "auto" if x.is_cuda else "reference"   # Triton's interpreter is for tests, not CPU evaluation
    weight = ridge_solve(x, y.contiguous(), lam, impl=impl)
    return (query.to(weight.dtype) @ weight).argmax(dim=2)


def confidence(accuracies: np.ndarray) -> tuple[float, float]:
    """(mean, 95% half-width 1.96 * std / sqrt(n)) of per-episode accuracies."""
    accuracies = np.asarray(accuracies, dtype=np.float64)
    return float(accuracies.mean()), float(1.96 * accuracies.std() / np.sqrt(len(accuracies)))


def episode_accuracies(features: torch.Tensor, support_idx: np.ndarray, query_idx: np.ndarray, lam: float,
                       chunk: int = 100) -> dict[str, np.ndarray]:
    """Per-episode query accuracy of each classifier; features are L2-normalised here."""
    features = torch.nn.functional.normalize(features.float(), dim=1)
    out = {"prototype": [], "ridge": []}
    for start in range(0, len(support_idx), chunk):
        s = torch.as_tensor(support_idx[start:start + chunk], device=features.device)
        q = torch.as_tensor(query_idx[start:start + chunk], device=features.device)
        episodes, ways, queries = q.shape
        support, query = features[s], features[q].reshape(episodes, ways * queries, -1)
        truth = torch.arange(ways, device=features.device).repeat_interleave(queries)
        for name, predicted in (("prototype", prototype_predict(support, query)),
                                ("ridge", ridge_predict(support, query, lam))):
            out[name].append((predicted == truth).double().mean(dim=1).cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def fewshot_eval(features: torch.Tensor, labels: torch.Tensor, settings: Settings,
                 progress: Progress = stderr_progress) -> dict:
    results = {}
    for shots in settings.shots:
        tick = time.perf_counter()
        support, query = sample_episodes(labels.cpu().numpy(), settings.ways, int(shots), settings.queries,
                                         settings.episodes, settings.seed)
        accs = episode_accuracies(features, support, query, settings.ridge_lambda, settings.chunk)
        key = f"{settings.ways}way_{shots}shot"
        results[key] = {}
        for name, values in accs.items():
            mean, ci95 = confidence(values)
            results[key][name] = {"mean": mean, "ci95": ci95}
        progress(f"fewshot: {key}, {settings.episodes} episodes: prototype "
                 f"{results[key]['prototype']['mean']:.4f}, ridge {results[key]['ridge']['mean']:.4f} "
                 f"in {time.perf_counter() - tick:.1f}s")
    return results


def evaluate(run: Run, settings: Settings, progress: Progress = stderr_progress) -> tuple[dict, dict, str]:
    if not settings.ridge_lambda > 0:
        raise ConfigError(f"fewshot: ridge_lambda={settings.ridge_lambda}: must be > 0")
    if settings.split not in ("train", "test"):
        raise ConfigError(f"fewshot: split={settings.split!r}: must be train or test")
    tick = time.perf_counter()
    features, labels = split_features(run, settings.split, progress)
    results = fewshot_eval(features, labels, settings, progress)
    parts = [f"{key} proto {r['prototype']['mean']:.4f}+-{r['prototype']['ci95']:.4f} "
             f"ridge {r['ridge']['mean']:.4f}+-{r['ridge']['ci95']:.4f}" for key, r in results.items()]
    return vars(settings), results, f"fewshot {'; '.join(parts)} in {time.perf_counter() - tick:.1f}s"
