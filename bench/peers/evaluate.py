"""The one evaluator for every trainer: fastssl's kNN and linear-probe protocols on the saved backbone.

A run's backbone.pt is loaded strict into a fresh network.backbone(recipe) (torchvision's ResNet), its
features h of the train and test splits are computed on unaugmented, normalised images
(fastssl.evaluation.features), and fastssl.evaluation.knn / .linear score them. The features are
written beside the backbone (train_features.npy, ...), so anyone can recompute the numbers.
Accuracy differences between rows then come from training alone.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastssl import config as config_mod
from fastssl.bench.peers.network import backbone
from fastssl.bench.peers.recipe import Recipe
from fastssl.engine.precision import resolve_precision
from fastssl.evaluation import knn, linear
from fastssl.evaluation.features import Progress, Run, split_features, stderr_progress
from fastssl.loaders import atomic


def load_backbone(path: Path, recipe: Recipe) -> torch.nn.Module:
    net = backbone(recipe)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))   # strict
    return net


def evaluate(run_dir: Path, recipe: Recipe, data: str, k: int = 200, temperature: float = 0.1,
             probe: bool = True, progress: Progress = stderr_progress) -> dict:
    """{"knn_top1", "linear_top1", ...} of RUN/backbone.pt on `data`'s train (bank, probe fit) and test splits."""
    run_dir = Path(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config_mod.load_config(None, ["data.dataset=imagefolder", f"data.path={data}",
                                        f"data.image_size={recipe.res}", f"knn.k={k}", f"knn.temperature={temperature}",
                                        f"loader.batch_size={min(recipe.batch, 512)}", f"loader.workers={recipe.workers}"])
    encoder = load_backbone(run_dir / "backbone.pt", recipe).to(device).eval()
    run = Run(cfg=cfg, run_dir=run_dir, ckpt=run_dir / "backbone.pt", step=0, encoder=encoder, device=device,
              precision=resolve_precision(cfg.train.precision, device))
    _, knn_results, knn_line = knn.evaluate(run, knn.Settings(), progress)
    progress(knn_line)
    out = {"knn_top1": knn_results["top1"], "knn_k": k, "knn_temperature": temperature,
           "num_train": knn_results["num_train"], "num_test": knn_results["num_test"]}
    if probe:
        _, linear_results, linear_line = linear.evaluate(run, linear.Settings(), progress)
        progress(linear_line)
        out["linear_top1"] = linear_results["top1"]
    for split in ("train", "test"):   # computed once by the protocols above; this call only returns them
        features, labels = split_features(run, split, progress)
        atomic.save_npy(run_dir / f"{split}_features.npy", features.cpu().numpy())
        atomic.save_npy(run_dir / f"{split}_labels.npy", labels.cpu().numpy())
    return out
