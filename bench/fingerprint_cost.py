"""`python -m fastssl.bench.fingerprint_cost`: what the training data's fingerprint costs each start, at
ImageNet's size (1.28 M file names in 1,000 classes) and at CIFAR-10's (50,000 images in memory).

Why: every rank fingerprints its training split at start-up (loaders/datasets/fingerprint.py), which is
linear in the dataset. Files are fingerprinted by their names and byte sizes as the index holds them, so
no file is read and the names are generated here (`n<class>/n<class>_<i>.JPEG`, as ImageNet names them);
pixels by their bytes. The baseline is one pass over the same bytes that any fingerprint of them must
make: joining and encoding the names (files), one copy of the array (pixels). Each repetition times
both in turn, in one process, so drift hits both alike.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fastssl.loaders.datasets.fingerprint import files_fingerprint, pixels_fingerprint

from .harness import Row, context, device_slug, plot_bars, summarize, write_csv, write_markdown

BASELINE, FINGERPRINT = "one pass over the bytes", "fingerprint"
IMAGENET_FILES, IMAGENET_CLASSES = 1_281_167, 1000
CIFAR_IMAGES, CIFAR_SIZE, CIFAR_CLASSES = 50_000, 32, 10
REPS, WARMUP = 5, 1


def imagenet_listing(files: int = IMAGENET_FILES, classes: int = IMAGENET_CLASSES):
    """(names, byte sizes, labels, class names) of a generated ImageFolder listing, class-major as listed."""
    rng = np.random.default_rng(0)
    names = [f"n{c:08d}" for c in range(classes)]
    labels = np.sort(rng.integers(0, classes, files))
    files_ = [f"{names[label]}/{names[label]}_{i}.JPEG" for i, label in enumerate(labels)]
    return files_, rng.integers(20_000, 200_000, files), labels, names


def cifar_pixels(images: int = CIFAR_IMAGES, size: int = CIFAR_SIZE, classes: int = CIFAR_CLASSES):
    rng = np.random.default_rng(1)
    return (rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8), np.arange(images) % classes,
            [str(c) for c in range(classes)])


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(reps: int = REPS, warmup: int = WARMUP, files: int = IMAGENET_FILES, images: int = CIFAR_IMAGES,
            progress=print) -> list[Row]:
    """Rows of ms per start for the fingerprint and its baseline, at both sizes."""
    names, sizes, labels, classes = imagenet_listing(files)
    pixels, pixel_labels, pixel_classes = cifar_pixels(images)
    cases = {
        f"{files:,} file names, {IMAGENET_CLASSES:,} classes": {
            BASELINE: lambda: "\0".join(names).encode(),
            FINGERPRINT: lambda: files_fingerprint(names, sizes, labels, classes)},
        f"{images:,} images {CIFAR_SIZE}x{CIFAR_SIZE} in memory": {
            BASELINE: lambda: pixels.tobytes(),
            FINGERPRINT: lambda: pixels_fingerprint(pixels, pixel_labels, pixel_classes)},
    }
    where, rows = context(torch.device("cpu")), []
    for shape, providers in cases.items():
        samples: dict[str, list[float]] = {provider: [] for provider in providers}
        for rep in range(warmup + reps):
            times = {provider: _seconds(work) for provider, work in providers.items()}
            if rep >= warmup:
                for provider, seconds in times.items():
                    samples[provider].append(seconds * 1e3)
        progress(f"{shape}: " + ", ".join(f"{p} {np.median(s):.0f} ms" for p, s in samples.items()))
        rows += [Row("fingerprint_cost", provider, shape, "-", "start-up", "time", *summarize(values), "ms", **where)
                 for provider, values in samples.items()]
    return rows


def write_all(rows: list[Row], out_dir: Path) -> list[Path]:
    """fingerprint_cost_<device>.{csv,md,png}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"fingerprint_cost_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    write_markdown(rows, paths[1], "The training data's fingerprint per start, against one pass over its bytes",
                   BASELINE)
    plot_bars(rows, paths[2], "Data fingerprint per start (ms)")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastssl.bench.fingerprint_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    for path in write_all(measure(args.reps), Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
