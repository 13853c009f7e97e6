"""Linear protocol: multinomial logistic regression on frozen features, computed once.

Features h of the train and test splits (eval transform, encoder frozen) are standardised with the fit
set's mean and std. For every (lr, weight decay) of a small grid, full-batch L-BFGS (strong-Wolfe line
search; lr is its initial step) minimises mean cross-entropy + wd/2 ||W||^2 (bias not decayed) on a
seeded, class-stratified train part; the cell with the best accuracy on the held-out validation part
(first in grid order on a tie) is refit on all train features and scored on the test split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from fastssl.config import ConfigError
from fastssl.evaluation.features import Progress, Run, accuracy, split_features, stderr_progress


@dataclass
class Settings:
    lrs: tuple[float, ...] = (1.0, 0.1)
    weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    val_fraction: float = 0.2
    max_iter: int = 200        # L-BFGS iterations per fit
    seed: int = 0


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, val) index tensors: round(fraction * n_c) of each class's samples to val (at least 1 where
    the class has 2 or more), chosen by a seeded permutation; both sorted."""
    if not 0 < fraction < 1:
        raise ConfigError(f"linear: val_fraction={fraction}: must lie in (0, 1)")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    val = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        n_val = min(max(round(fraction * len(idx)), 1 if len(idx) > 1 else 0), len(idx) - 1)
        val.append(idx[torch.randperm(len(idx), generator=generator)[:n_val]])
    val = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return mask.nonzero().flatten(), val


def standardize(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = fit_x.mean(0), fit_x.std(0, unbiased=False).clamp_min(1e-6)
    return [(x - mean) / std for x in (fit_x, *others)]


def objective(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              weight_decay: float) -> torch.Tensor:
    return nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, lr: float = 1.0,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (D, C), b (C,)) minimising mean cross-entropy + wd/2 ||W||^2 by full-batch L-BFGS from zero."""
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = objective(weight, bias, x, y, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def predict(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x @ weight + bias).argmax(dim=1)


def linear_eval(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                num_classes: int, settings: Settings, progress: Progress = stderr_progress) -> dict:
    """Grid search on a held-out part of train, refit on all of train, test top-1."""
    if not settings.lrs or not settings.weight_decays:
        raise ConfigError("linear: lrs and weight_decays must each list at least one value")
    fit_idx, val_idx = stratified_split(train_y, settings.val_fraction, settings.seed)
    fit_idx, val_idx = fit_idx.to(train_x.device), val_idx.to(train_x.device)
    fx, vx = standardize(train_x[fit_idx], train_x[val_idx])
    fy, vy = train_y[fit_idx], train_y[val_idx]
    grid, best = [], None
    for lr in settings.lrs:
        for wd in settings.weight_decays:
            w, b = fit_logistic(fx, fy, num_classes, float(wd), float(lr), settings.max_iter)
            val_top1 = accuracy(predict(w, b, vx), vy)
            grid.append({"lr": float(lr), "weight_decay": float(wd), "val_top1": val_top1})
            progress(f"linear: lr={lr:g} wd={wd:g} val top1={val_top1:.4f}")
            if best is None or val_top1 > best["val_top1"]:
                best = grid[-1]
    ax, tx = standardize(train_x, test_x)
    w, b = fit_logistic(ax, train_y, num_classes, best["weight_decay"], best["lr"], settings.max_iter)
    return {"top1": accuracy(predict(w, b, tx), test_y), "train_top1": accuracy(predict(w, b, ax), train_y),
            "best_lr": best["lr"], "best_weight_decay": best["weight_decay"], "best_val_top1": best["val_top1"],
            "grid": grid, "num_fit": len(fit_idx), "num_val": len(val_idx), "num_train": len(train_y),
            "num_test": len(test_y), "feature_dim": train_x.shape[1]}


def evaluate(run: Run, settings: Settings, progress: Progress = stderr_progress) -> tuple[dict, dict, str]:
    tick = time.perf_counter()
    train_x, train_y = split_features(run, "train", progress)
    test_x, test_y = split_features(run, "test", progress)
    results = linear_eval(train_x, train_y, test_x, test_y, run.num_classes(), settings, progress)
    summary = (f"linear top1={results['top1']:.4f} (lr={results['best_lr']:g} wd={results['best_weight_decay']:g}, "
               f"val {results['best_val_top1']:.4f}) in {time.perf_counter() - tick:.1f}s")
    return {"optimizer": "lbfgs", **vars(settings)}, results, summary
