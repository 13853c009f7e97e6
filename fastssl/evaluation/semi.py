"""Semi-supervised protocol: fine-tune the encoder + a linear layer on class-balanced label subsets.

For each fraction (default 1% and 10%), a seeded, class-balanced subset of the train split is chosen
(max(1, round(fraction * n_c)) images of each class c, saved as RUN/eval_semi_indices_<p>pct.npy and
listed in the JSON); a copy of the checkpoint's encoder plus a fresh linear layer are trained on it with
cross-entropy (SGD + Nesterov momentum, cosine schedule, random horizontal flips of the eval-transformed
images, batch norm in train mode), then scored on the whole test split.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fastssl.engine.precision import grad_scaler
from fastssl.config import ConfigError
from fastssl.evaluation.features import Progress, Run, accuracy, encode, stderr_progress
from fastssl.loaders import atomic
from fastssl.loaders.augment import eval_transform
from fastssl.loaders.factory import build_eval_batches


@dataclass
class Settings:
    fractions: tuple[float, ...] = (0.01, 0.1)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.01           # encoder
    head_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices: max(1, round(fraction * n_c)) distinct samples of every class c, seeded."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"semi: fraction={fraction}: must lie in (0, 1]")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(chosen))


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def finetune(run: Run, images: torch.Tensor, labels: torch.Tensor, settings: Settings, tag: str,
             progress: Progress) -> nn.Module:
    """A copy of the run's encoder + a linear layer trained on uint8 images (n, H, W, 3) on the device."""
    torch.manual_seed(settings.seed)
    model = Classifier(copy.deepcopy(run.encoder), run.num_classes()).to(run.device).train()
    groups = [{"params": model.encoder.parameters(), "lr": settings.lr},
              {"params": model.fc.parameters(), "lr": settings.head_lr}]
    optimizer = torch.optim.SGD(groups, momentum=settings.momentum, nesterov=settings.momentum > 0,
                                weight_decay=settings.weight_decay)
    batch = min(settings.batch_size, len(labels))
    steps_per_epoch = math.ceil(len(labels) / batch)
    total = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    scaler = grad_scaler(run.precision, run.device)
    generator = torch.Generator().manual_seed(settings.seed)
    size = run.cfg.data.image_size
    for epoch in range(settings.epochs):
        tick, loss_sum = time.perf_counter(), torch.zeros((), device=run.device)
        order = torch.randperm(len(labels), generator=generator).to(run.device)
        flips = (torch.rand(len(labels), generator=generator) < 0.5).to(run.device)
        for start in range(0, len(labels), batch):
            rows = order[start:start + batch]
            x = eval_transform(images[rows], size)
            x = torch.where(flips[rows].view(-1, 1, 1, 1), x.flip(3), x)
            with run.autocast():
                loss = nn.functional.cross_entropy(model(x).float(), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach()
        progress(f"semi {tag}: epoch {epoch + 1}/{settings.epochs} loss {float(loss_sum) / steps_per_epoch:.4f} "
                 f"in {time.perf_counter() - tick:.1f}s")
    return model.eval()


def evaluate(run: Run, settings: Settings, progress: Progress = stderr_progress) -> tuple[dict, dict, str]:
    if settings.epochs < 1 or settings.batch_size < 1:
        raise ConfigError(f"semi: epochs={settings.epochs}, batch_size={settings.batch_size}: must be >= 1")
    tick = time.perf_counter()
    train = run.dataset("train")
    pixels = train.to_array(run.cfg.data.image_size)
    test_batches = build_eval_batches(run.cfg.load_settings(), run.dataset("test"), run.device)
    results = {}
    for fraction in settings.fractions:
        fraction = float(fraction)
        tag = f"{100 * fraction:g}%"
        indices = balanced_subset(train.labels, fraction, settings.seed)
        index_file = run.run_dir / f"eval_semi_indices_{100 * fraction:g}pct.npy"
        atomic.save_npy(index_file, indices)
        images = torch.from_numpy(pixels[indices]).to(run.device)
        labels = torch.as_tensor(train.labels[indices], dtype=torch.int64, device=run.device)
        model = finetune(run, images, labels, settings, tag, progress)
        with torch.no_grad():
            logits, truth = encode(model, test_batches, run.autocast)
        results[tag] = {"fraction": fraction, "top1": accuracy(logits.argmax(1), truth), "num_labels": len(indices),
                        "indices_file": index_file.name, "indices": indices.tolist()}
        progress(f"semi {tag}: {len(indices)} labels, test top1 {results[tag]['top1']:.4f}")
    parts = ", ".join(f"{tag} top1={r['top1']:.4f}" for tag, r in results.items())
    return vars(settings), results, f"semi {parts} in {time.perf_counter() - tick:.1f}s"
