"""`fastssl features`: the frozen encoder's features and labels as .npy files, for users who evaluate
with their own tools.

Per split, OUT/<split>_features.npy ((N, D) float32, h = f(x), the encoder output, not normalised) and
OUT/<split>_labels.npy ((N,) int64), row i being image i of the split in the dataset's order, computed
batch by batch on the run's device exactly as `fastssl eval` computes them (unaugmented, normalised
images). Rows are written to the file batch by batch: ImageNet's 1.28 M x 2048 features are 10.5 GB and
never sit in memory whole (nor in a memory map, whose pages a full disk cannot back: the process
would die of SIGBUS, leaving its temporary file). Each file is written atomically, a full disk being
a NoSpaceError (loaders/atomic.py); OUT/features.json says what they are.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastssl.engine.knn import batch_features
from fastssl.evaluation.features import Run
from fastssl.loaders import atomic
from fastssl.loaders.factory import build_eval_batches
from fastssl.loaders.progress import tracked

SPLITS = ("train", "test")


def default_out(run: Run) -> Path:
    """RUN/features on the run's own data, RUN/features_<data tag> on other data: never mixed up."""
    return run.run_dir / (f"features_{run.data_tag}" if run.data_tag else "features")


def write_split(run: Run, split: str, out_dir: Path) -> dict:
    """OUT/<split>_features.npy and OUT/<split>_labels.npy; what was written, for features.json."""
    dataset = run.dataset(split)
    batches = tracked(build_eval_batches(run.cfg.load_settings(), dataset, run.device), f"features: {split} split",
                      "batches")
    n, dim = len(dataset), run.encoder.feature_dim
    features_path, labels_path = out_dir / f"{split}_features.npy", out_dir / f"{split}_labels.npy"
    labels = np.empty(n, dtype=np.int64)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, dim)}
    with atomic.atomic_path(features_path, needed=n * dim * 4) as part, open(part, "wb") as rows:
        np.lib.format.write_array_header_1_0(rows, header)
        start = 0
        for h, y in batch_features(run.encoder, batches, run.autocast, normalize=False):
            rows.write(h.float().cpu().numpy().tobytes())
            labels[start:start + len(y)] = y.cpu().numpy()
            start += len(y)
    atomic.save_npy(labels_path, labels)
    return {"features": features_path.name, "labels": labels_path.name, "rows": n, "dim": dim}


def write_features(run: Run, out_dir: Path | None, splits: tuple[str, ...] = SPLITS) -> Path:
    """Every split's files and OUT/features.json; the folder they are in."""
    out_dir = Path(out_dir) if out_dir else default_out(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {split: write_split(run, split, out_dir) for split in splits}
    record = {"checkpoint": str(run.ckpt), "step": run.step, "representation": "encoder output h, not normalised",
              "dataset": run.cfg.data.dataset, "data_path": run.cfg.data.path, "image_size": run.cfg.data.image_size,
              "overrides": run.overrides, "device": str(run.device), "precision": run.precision,
              "classes": list(run.dataset("train").classes), "splits": written}
    atomic.write_text(out_dir / "features.json", json.dumps(record, indent=2) + "\n")
    return out_dir
