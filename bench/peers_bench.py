"""`fastssl bench peers`: every trainer on one recipe, each run its own process, one evaluator.

For each method, width and seed: fastssl on each of its data backends that runs here, and every peer
that offers the method (bench/peers/*_runner.py). A run's images/s come from its optimizer-step times
(bench/peers/clock.py): the first `skip` steps (imports, compilation, JIT, worker start) are reported
as time to first step, the rest cut into windows of `window` steps; median, p20 and p80 over the
windows of all seeds. Its backbone is scored by bench/peers/evaluate.py (kNN, linear probe).
`--limit-train/--limit-test N` link the first N images of each class into a smaller folder, so the
same epochs fit a CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from fastssl.bench.peers import runners
from fastssl.bench.peers.clock import quantile, summarize, window_rates
from fastssl.bench.peers.evaluate import evaluate
from fastssl.bench.peers.recipe import METHODS, Recipe, Spec
from fastssl.loaders.rules import ConfigError

Progress = Callable[[str], None]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class RunRow:
    trainer: str
    method: str
    width: float
    seed: int
    status: str                      # ok, failed or not run
    reason: str = ""
    version: str = ""
    ips_median: float | None = None
    ips_p20: float | None = None
    ips_p80: float | None = None
    first_step_s: float | None = None
    train_wall_s: float | None = None
    steps: int = 0
    peak_rss_mib: float | None = None
    cuda_peak_mib: float | None = None
    knn_top1: float | None = None
    linear_top1: float | None = None
    substitutions: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list, repr=False)


def subset(data: Path, out: Path, per_class: dict[str, int]) -> Path:
    """A folder of symbolic links to the first N files (sorted) of each class of each split; N = 0: all."""
    for split, limit in per_class.items():
        source = data / split
        if not source.is_dir():
            raise ConfigError(f"--data {data}: has no {split}/ folder (an ImageFolder root holds train/<class>/ "
                              "and test/<class>/)")
        for cls in sorted(p for p in source.iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            target = out / split / cls.name
            target.mkdir(parents=True, exist_ok=True)
            for f in files[:limit] if limit else files:
                link = target / f.name
                if not link.is_symlink():
                    link.symlink_to(f.resolve())
    return out


def plan(peers: list[str], methods: list[str], backends: list[str], widths: list[float], seeds: int,
         base: Recipe, data: str, out: Path, beton: str) -> tuple[list[Spec], list[RunRow]]:
    """The runs to make, and a 'not run' row with the reason for every (trainer, method) left out."""
    table = runners()
    unknown = [p for p in peers if p not in table]
    if unknown:
        raise ConfigError(f"--peers {','.join(unknown)}: must be among {', '.join(sorted(table))}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"--methods {','.join(bad)}: must be among {', '.join(METHODS)}")
    specs, skipped = [], []
    # Seeds outermost: a slow spell of the machine then falls on every trainer's seed alike, not on one trainer.
    for seed in range(seeds):
        for width in widths:
            for method in methods:
                for peer in peers:
                    module = table[peer]
                    reason = module.unavailable() if hasattr(module, "unavailable") else None
                    if reason is None and method not in module.METHODS:
                        reason = f"{peer}'s runner covers {', '.join(module.METHODS)}, not {method}"
                    kinds = [(b, _backend_missing(b)) for b in backends] if peer == "fastssl" else [("", None)]
                    for backend, missing in kinds:
                        name = f"{peer}:{backend}" if backend else peer
                        why = reason or missing
                        if why:
                            if seed == 0:
                                skipped.append(RunRow(name, method, width, 0, "not run", why, module.version()))
                            continue
                        recipe = replace(base, method=method, width=width, seed=seed)
                        folder = out / "runs" / f"{name.replace(':', '-')}_{method}_w{width:g}_s{seed}"
                        specs.append(Spec(peer=peer, recipe=recipe, data=data, out=str(folder), backend=backend,
                                          beton=beton if backend == "ffcv" else ""))
    return specs, skipped


def _backend_missing(backend: str) -> str | None:
    """Why fastssl's `backend` cannot run here, or None."""
    modules = {"ffcv": "fastssl.loaders.ffcv_imports", "dali": "nvidia.dali"}
    if backend not in ("tensor", "torchvision", *modules):
        raise ConfigError(f"--backends {backend}: must be among tensor, torchvision, ffcv, dali")
    if backend in modules:
        try:
            __import__(modules[backend])
        except ImportError as e:
            return f"fastssl's {backend} backend needs its extra: {e}"
    return None


def run_one(spec: Spec, skip: int, window: int, timeout: float, probe: bool, progress: Progress) -> RunRow:
    """Trains in a child process, then evaluates its backbone; a failure is a row, not an exception."""
    folder = Path(spec.out)
    folder.mkdir(parents=True, exist_ok=True)
    spec.substitutions = runners()[spec.peer].substitutions(spec)
    r = spec.recipe
    row = RunRow(spec.name, r.method, r.width, r.seed, "failed", version=runners()[spec.peer].version(),
                 substitutions=spec.substitutions)
    if _finished(spec, folder):   # a finished run of the same spec (an interrupted bench, rerun) is reused
        spec.launched = Spec.load(folder / "spec.json").launched
    else:
        _train(spec, folder, timeout, row)
    if not (folder / "result.json").is_file():
        return row
    result = json.loads((folder / "result.json").read_text())
    times = result["times"]
    stats = summarize(times, r.batch, spec.launched, skip, window)
    row.status, row.version = "ok", result["version"]
    row.rates = window_rates(times, r.batch, skip, window)
    row.ips_median, row.ips_p20, row.ips_p80 = (stats.get(k) for k in ("ips_median", "ips_p20", "ips_p80"))
    row.first_step_s, row.steps = stats["first_step_s"], stats["steps"]
    row.train_wall_s, row.peak_rss_mib = result["train_wall_s"], result["peak_rss_mib"]
    row.cuda_peak_mib = result.get("cuda_peak_mib")
    scores = evaluate(folder, r, spec.data, probe=probe, progress=progress)
    row.knn_top1, row.linear_top1 = scores["knn_top1"], scores.get("linear_top1")
    return row


def _finished(spec: Spec, folder: Path) -> bool:
    if not (folder / "result.json").is_file() or not (folder / "spec.json").is_file():
        return False
    old = Spec.load(folder / "spec.json")
    return (old.peer, old.backend, old.recipe, old.data) == (spec.peer, spec.backend, spec.recipe, spec.data)


def _train(spec: Spec, folder: Path, timeout: float, row: RunRow) -> None:
    """The child process, in a folder cleared of any earlier unfinished attempt (a stale fastssl run
    folder would be trained on top of); on failure row.reason gets the exit code and the log's last line."""
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    spec.launched = time.time()
    spec.save(folder / "spec.json")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(folder / "log.txt", "w") as log:
        try:
            code = subprocess.run([sys.executable, "-m", "fastssl.bench.peers.child", str(folder / "spec.json")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            row.reason = f"timed out after {timeout:.0f}s (log: {folder / 'log.txt'})"
            return
    if code != 0 or not (folder / "result.json").is_file():
        tail = (folder / "log.txt").read_text(errors="replace").strip().splitlines()[-1:]
        row.reason = f"exit {code}: {tail[0] if tail else 'no output'} (log: {folder / 'log.txt'})"
        (folder / "result.json").unlink(missing_ok=True)


def measure(specs: list[Spec], skip: int, window: int, timeout: float, probe: bool,
            progress: Progress) -> list[RunRow]:
    rows = []
    for i, spec in enumerate(specs, 1):
        r = spec.recipe
        progress(f"[{i}/{len(specs)}] {spec.name} {r.method} width {r.width:g} seed {r.seed}: training")
        row = run_one(spec, skip, window, timeout, probe, progress)
        rows.append(row)
        if row.status == "ok":
            progress(f"[{i}/{len(specs)}] {spec.name} {r.method}: {row.ips_median or 0:,.1f} img/s, first step "
                     f"{row.first_step_s:.1f}s, knn {row.knn_top1:.4f}")
        else:
            progress(f"[{i}/{len(specs)}] {spec.name} {r.method}: {row.status}: {row.reason}")
    return rows


@dataclass
class Summary:
    """One (trainer, method, width) over its seeds."""
    trainer: str
    method: str
    width: float
    version: str
    seeds: int
    ips_median: float | None
    ips_p20: float | None
    ips_p80: float | None
    first_step_s: float | None
    peak_rss_mib: float | None
    cuda_peak_mib: float | None
    knn_mean: float | None
    knn_sd: float | None
    linear_mean: float | None
    status: str
    reason: str


def summarize_rows(rows: list[RunRow]) -> list[Summary]:
    groups: dict[tuple, list[RunRow]] = {}
    for row in rows:
        groups.setdefault((row.trainer, row.method, row.width), []).append(row)
    out = []
    for (trainer, method, width), group in groups.items():
        ok = [r for r in group if r.status == "ok"]
        rates = [x for r in ok for x in r.rates]
        knn = [r.knn_top1 for r in ok if r.knn_top1 is not None]
        lin = [r.linear_top1 for r in ok if r.linear_top1 is not None]
        mean = (lambda xs: statistics.fmean(xs) if xs else None)
        out.append(Summary(
            trainer, method, width, group[0].version, len(ok),
            statistics.median(rates) if rates else None, quantile(rates, 0.2) if rates else None,
            quantile(rates, 0.8) if rates else None, mean([r.first_step_s for r in ok if r.first_step_s]),
            max((r.peak_rss_mib for r in ok), default=None), max((r.cuda_peak_mib or 0 for r in ok), default=None),
            mean(knn), statistics.stdev(knn) if len(knn) > 1 else None, mean(lin),
            "ok" if ok else group[0].status, "" if ok else group[0].reason))
    return out


def prepare_beton(data: str, work: Path, progress: Progress) -> str:
    """fastssl's ffcv backend reads a .beton: written once from the train split (raw pixels, the
    conversion fastssl recommends at CIFAR size); the time is reported, not counted in any run."""
    from fastssl.cli import main

    beton = work / "train.beton"
    if not beton.is_file():
        tick = time.perf_counter()
        if main(["data", "convert", "--src", f"imagefolder:{data}/train", "--dst", str(beton), "--raw"]) != 0:
            raise ConfigError(f"fastssl data convert of {data}/train failed")
        progress(f"ffcv: wrote {beton} in {time.perf_counter() - tick:.1f}s (not counted in the runs)")
    return str(beton)


def recipe_line(r: Recipe) -> str:
    return (f"{r.arch} ({'CIFAR' if r.cifar_stem else 'standard'} stem) at {r.res} px, batch {r.batch}, "
            f"{r.views} views, {r.epochs} epochs, SGD lr {r.lr:g} (= {r.lr_per_128:g} x batch/128) momentum "
            f"{r.momentum:g} wd {r.weight_decay:g}, warm-up {r.warmup_fraction:.0%} of the steps then cosine, "
            f"projector {r.projector_hidden} -> {r.projector_out}, temperature {r.temperature:g}, EMA "
            f"{r.ema_start:g} -> 1, crop scale {r.crop_scale_min:g}-1, flip {r.flip_p:g}, colour jitter p "
            f"{r.jitter_p:g} {tuple(r.jitter)}, grayscale {r.grayscale_p:g}, no blur or solarisation, "
            f"{r.workers} loading workers")


def start_context() -> dict:
    """Device, versions, commit and date, taken when the bench starts: the code that ran, not what the
    checkout holds when it ends."""
    import torch

    from fastssl.bench.harness import context

    return context(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def write_all(rows: list[RunRow], base: Recipe, command: str, stem: Path, info: dict) -> list[Path]:
    from fastssl.bench.peers import report

    info = dict(info)
    versions = sorted({f"{r.trainer.split(':')[0]} {r.version}" for r in rows})
    info["peers"] = ", ".join(versions)
    stem.parent.mkdir(parents=True, exist_ok=True)
    summaries = summarize_rows(rows)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    report.write_csv(rows, info, paths[0])
    report.write_markdown(summaries, rows, info, recipe_line(base), command, paths[1])
    report.plot(summaries, paths[2], f"{info['device']}; {recipe_line(base)[:90]}...")
    return paths
