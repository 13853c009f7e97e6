"""`fastssl bench loader`: steady-state images/s and CPU use of each data backend against the plain
torchvision DataLoader, in one process, on the same data, recipe, views, batch and worker count.

Per backend, start-up (building the loader: reading the split to the device, JIT compilation,
pipeline build, plus its first batch) is timed once and reported apart from the steady state. Then
timing windows alternate between backends, so drift in the machine's speed hits all of them alike;
a window pulls batches for `seconds / windows` of wall time and ends with a device sync. CPU use is
the CPU time of this process and all its descendants (workers, pipeline threads) per wall second of
the window, read from /proc: how many cores the backend keeps busy to deliver that rate.

images/s counts images, each with all its views: a multi-crop batch (augment.crops) of B images is B
images whatever its views' sizes, which the shape names per run of equal size ('2x256x32px+6x256x16px':
2 views of 256 images at 32 px, 6 at 16 px). Rows of several shapes share the results files: `python -m
fastssl.bench.loader_bench merge NEW INTO` puts a run's shapes into an earlier run's files.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

from fastssl.config import Config, ConfigError
from fastssl.loaders.datasets import build_dataset
from fastssl.loaders import atomic
from fastssl.loaders.augment import view_sizes
from fastssl.loaders.batch import views_label
from fastssl.loaders.factory import build_train_loader

from .harness import Row, context, device_slug, plot_bars, summarize, write_csv

BASELINE = "torchvision"
GENERATED_KINDS = ("shapes", "random")        # made by the project: no path
DATA_KINDS = GENERATED_KINDS + ("imagefolder", "cifar10", "fashion_mnist")
METRICS = ("images/s", "CPU cores", "start-up")


def parse_data(spec: str) -> dict:
    """`shapes`, `random`, or KIND:PATH with KIND one of imagefolder, cifar10, fashion_mnist -> DataConfig
    fields."""
    kind, _, path = spec.partition(":")
    if kind not in DATA_KINDS or (kind not in GENERATED_KINDS) != bool(path):
        raise ConfigError(f"--data {spec!r}: must be {' or '.join(GENERATED_KINDS)}, or KIND:PATH with KIND one of "
                          f"{', '.join(DATA_KINDS[len(GENERATED_KINDS):])}")
    return {"dataset": kind, "path": path or None}


def process_tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of `root` (default: this process), its reaped children and every live
    descendant, from /proc (Linux)."""
    root = os.getpid() if root is None else root
    parent, spent = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # the process ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # fields after the command name: state, ppid, ...
        pid = int(entry)
        parent[pid] = int(fields[1])
        spent[pid] = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if pid == root else 0)

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parent.get(pid, 0)
        return False

    return sum(ticks for pid, ticks in spent.items() if descends(pid)) / os.sysconf("SC_CLK_TCK")


def _endless(loader) -> Iterator:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _window(batches: Iterator, per_batch: int, seconds: float, device: torch.device) -> tuple[float, float]:
    """(images/s, CPU cores) over batches pulled for `seconds` of wall time."""
    _sync(device)
    cpu, start = process_tree_cpu_seconds(), time.perf_counter()
    images = 0
    while time.perf_counter() - start < seconds:
        batch = next(batches)
        images += per_batch
    _sync(device)
    del batch
    wall = time.perf_counter() - start
    return images / wall, (process_tree_cpu_seconds() - cpu) / wall


def measure(cfg: Config, backends: list[str], seconds: float, windows: int, progress=print) -> list[Row]:
    """Rows per backend: images/s and CPU cores (median, p20, p80 over windows) and start-up seconds."""
    from fastssl.engine.precision import resolve_device

    device = resolve_device(cfg.train.device)
    dataset = build_dataset(cfg.data, "train")
    streams, startup = {}, {}
    for backend in backends:
        run_cfg = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, backend=backend))
        start = time.perf_counter()
        streams[backend] = _endless(build_train_loader(run_cfg.load_settings(), dataset, device))
        next(streams[backend])
        _sync(device)
        startup[backend] = time.perf_counter() - start
        progress(f"{backend}: start-up and first batch {startup[backend]:.2f} s")
    rates = {b: [] for b in backends}
    cores = {b: [] for b in backends}
    for w in range(windows):
        for backend in backends:
            rate, busy = _window(streams[backend], cfg.loader.batch_size, seconds / windows, device)
            rates[backend].append(rate)
            cores[backend].append(busy)
        progress(f"window {w + 1}/{windows}: " + ", ".join(f"{b} {r[-1]:,.0f} img/s" for b, r in rates.items()))
    where = context(device)
    sizes = view_sizes(cfg.augment, cfg.loader.views, cfg.data.image_size)
    shape = f"{cfg.data.dataset} {views_label(sizes, cfg.loader.batch_size)} {cfg.loader.workers} workers"
    rows = []
    for backend in backends:
        rows.append(Row("loader", backend, shape, "uint8", "steady state", "images/s", *summarize(rates[backend]),
                        unit="img/s", **where))
        rows.append(Row("loader", backend, shape, "uint8", "steady state", "CPU cores", *summarize(cores[backend]),
                        unit="cores", **where))
        rows.append(Row("loader", backend, shape, "uint8", "once", "start-up", *([startup[backend]] * 3),
                        unit="s", **where))
    return rows


def markdown(rows: list[Row]) -> str:
    """A table per shape, one line per backend: rate with spread, ratio to the same shape's baseline,
    cores busy, images per core-second."""
    lines = ["# Data loader throughput", "",
             "Steady-state images/s (median, p20-p80 over alternating windows; an image counts once whatever "
             "its views), the CPU cores the process tree kept busy meanwhile, and start-up (build + first batch, "
             "JIT included) apart. Shapes: views x batch x side per run of equal-sized views."]
    for shape in dict.fromkeys(r.shape for r in rows):
        at = {(r.provider, r.metric): r for r in rows if r.shape == shape}
        first = next(r for r in rows if r.shape == shape)
        base = at.get((BASELINE, "images/s"))
        lines += ["", f"## {shape}", "", f"{first.device}; torch {first.torch}; commit {first.commit}; {first.date}",
                  "", f"| backend | images/s | p20-p80 | vs {BASELINE} | CPU cores | images/s per core | start-up s |",
                  "|---|---|---|---|---|---|---|"]
        for backend in dict.fromkeys(provider for provider, _ in at):
            rate, busy, up = at[(backend, "images/s")], at[(backend, "CPU cores")], at[(backend, "start-up")]
            ratio = f"{rate.median / base.median:.2f}x" if base else "n/a"
            per_core = f"{rate.median / busy.median:,.0f}" if busy.median > 0 else "n/a"
            lines.append(f"| {backend} | {rate.median:,.0f} | {rate.p20:,.0f}-{rate.p80:,.0f} | {ratio} | "
                         f"{busy.median:.2f} | {per_core} | {up.median:.2f} |")
    return "\n".join(lines) + "\n"


def read_rows(stem: Path) -> list[Row]:
    """The rows of the results written under `stem` (its .csv)."""
    floats = {"median", "p20", "p80"}
    with open(stem.with_suffix(".csv"), newline="") as f:
        return [Row(**{k: float(v) if k in floats else v for k, v in record.items()})
                for record in csv.DictReader(f)]


def merge(new: Path, into: Path) -> list[Path]:
    """INTO's rows with those of every shape NEW measured replaced by NEW's (a rerun of a shape replaces
    it, other shapes are kept), written over INTO's CSV, Markdown, PNG and, where INTO has one, JSON."""
    added = read_rows(new)
    shapes = {r.shape for r in added}
    rows = [r for r in read_rows(into) if r.shape not in shapes] + added
    json_path = into.with_suffix(".json")
    return write_all(rows, into.parent, json_path if json_path.is_file() else None, into.name)


def write_all(rows: list[Row], out_dir: Path, json_path: Path | None = None, name: str | None = None) -> list[Path]:
    """CSV, Markdown and PNG (images/s per backend and shape) named `name` (default: after the device);
    JSON too when asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / (name or f"loader_{device_slug(rows[0].device)}")
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    atomic.write_text(paths[1], markdown(rows))
    plot_bars([r for r in rows if r.metric == "images/s"], paths[2], "Data loader throughput (images/s)")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(json_path, json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
        paths.append(json_path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastssl.bench.loader_bench",
                                     description="Put the shapes of one loader benchmark into another's files.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("merge", help="NEW's shapes replace or join INTO's rows (CSV, Markdown, PNG, JSON)")
    add.add_argument("new", type=Path, help="results stem with the new rows, no suffix (e.g. /tmp/mc/loader_cpu)")
    add.add_argument("into", type=Path, help="results stem to put them in (e.g. bench/results/loader_cpu)")
    args = parser.parse_args(argv)
    print(f"wrote {', '.join(map(str, merge(args.new, args.into)))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
