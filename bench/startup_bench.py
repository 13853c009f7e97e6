"""`fastssl bench startup`: how long each data backend takes from nothing to its first training batch,
over a generated tree at ImageNet's layout, the first time (no dataset index) and the second time
(the index is there).

The tree: ROOT/train/<wnid>/<wnid>_<number>.JPEG, `files` small JPEGs (32-64 px a side, each its own
size, colours and quality) in `classes` folders named like WordNet ids, and ROOT/val/<wnid>/ with one
file per class (the test split `build_dataset` checks). It is written once and reused while its marker
file says it is complete and of the same shape.

Each start runs in a fresh Python process, so every one pays the same imports and none is helped by an
in-process cache; the page cache is warm for all of them (the tree was just written or read) and is not
dropped. The process reports its Python + imports time apart, then the start: from just before
`build_dataset` (which indexes the train split) to the first batch the backend's loader yields. A
first start points FASTSSL_INDEX_DIR at an empty folder; the second start of the same pair reuses it.
The ffcv backend reads a .beton converted from the tree beforehand, once, outside its starts.

Beside the processes, the index's pieces are timed in this process (list + stat per file, header reads
per second over all cores, reading and writing the index file) to extrapolate to ImageNet's 1,281,167
training files.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

IMAGENET_TRAIN = 1_281_167       # files in ImageNet-1k's train split
TARGET_S = 5.0                   # the target: a second start under 5 s at 100,000 files
TARGET_FILES = 100_000
PACKAGES = {"dali": "nvidia.dali", "ffcv": "ffcv"}   # optional extras, by the module a start imports
MARKER = ".startup-bench.json"   # beside train/ and val/: what was written, and whether it finished
TREE_VERSION = 1
SIDES = (32, 64)                 # image sides drawn from [32, 64]
PARALLEL_MIN = 2000              # files below which the tree is written in this process
# The start's run config: a tiny training recipe over the tree (the test split is val/, ImageNet's).
CONFIG = ("data.dataset=imagefolder", "data.test_split=val", "data.image_size=32", "loader.batch_size=64",
          "loader.views=2", "loader.workers=2")
TENSOR_NOTE = ("the tensor backend decodes the whole split into memory at every start, by design: its "
               "start is bounded by decoding, not by the index, and its second start is a full decode again")

Say = Callable[[str], None]


def _now() -> float:
    """CLOCK_MONOTONIC: one clock for this process and the start processes it times."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def default_root(files: int, classes: int) -> Path:
    """Where the tree goes unless --root says otherwise: the temporary folder, never the repository."""
    return Path(tempfile.gettempdir()) / "fastssl-startup-bench" / f"imagenet_{files}x{classes}"


# -- the tree ------------------------------------------------------------------------------------------
def wnids(classes: int, seed: int = 0) -> list[str]:
    """`classes` distinct, sorted WordNet-style ids n%08d in ImageNet's range (n01440764..n15075141)."""
    rng = np.random.default_rng([seed, 1])
    return [f"n{i:08d}" for i in sorted(1_440_764 + rng.choice(15_075_141 - 1_440_764, classes, replace=False))]


def files_per_class(files: int, classes: int) -> list[int]:
    """As even as possible; the first files % classes classes hold one more."""
    return [files // classes + (k < files % classes) for k in range(classes)]


def _write_class(task: tuple[str, list[str], int, int]) -> int:
    """Write one class folder's JPEGs; each image is its own size, colours and quality. Returns bytes."""
    from PIL import Image

    folder, names, seed, label = task
    rng = np.random.default_rng([seed, 2, label])
    os.makedirs(folder, exist_ok=True)
    written = 0
    for name in names:
        height, width = (int(s) for s in rng.integers(SIDES[0], SIDES[1] + 1, 2))
        colours = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)   # a smooth field, distinct per file
        path = os.path.join(folder, name)
        Image.fromarray(colours).resize((width, height), Image.BILINEAR).save(
            path, "JPEG", quality=int(rng.integers(75, 96)))
        written += os.path.getsize(path)
    return written


def _tree_spec(files: int, classes: int, seed: int) -> dict:
    return {"version": TREE_VERSION, "files": files, "classes": classes, "val_per_class": 1, "seed": seed}


def make_tree(root: Path, files: int, classes: int, seed: int = 0, progress: Say = print) -> tuple[bool, float]:
    """ROOT/train and ROOT/val at ImageNet's layout; (whether it was reused, seconds spent writing).

    Reused when ROOT's marker says a complete tree of this shape; a tree this benchmark left unfinished
    or of another shape is removed first. A ROOT with anything else in it is refused, never deleted.
    """
    from fastssl.loaders import atomic
    from fastssl.loaders.progress import ProgressBar

    if classes < 1 or files < classes:
        raise ValueError(f"files={files}, classes={classes}: need classes >= 1 and a file per class at least")
    spec = _tree_spec(files, classes, seed)
    marker = root / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == dict(spec, complete=True):
            return True, 0.0
        progress(f"{root}: a tree of another shape or an unfinished one; removing it")
        for folder in ("train", "val"):
            shutil.rmtree(root / folder, ignore_errors=True)
        for name in ("train.beton", MARKER + ".beton"):
            (root / name).unlink(missing_ok=True)
    elif root.exists() and any(root.iterdir()):
        from fastssl.config import ConfigError

        raise ConfigError(f"--root {str(root)!r}: holds files this benchmark did not write; pick a new or empty "
                         f"folder")
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(marker, json.dumps(dict(spec, complete=False)))
    start = _now()
    ids = wnids(classes, seed)
    rng = np.random.default_rng([seed, 3])
    tasks = []
    for label, (wnid, count) in enumerate(zip(ids, files_per_class(files, classes))):
        numbers = np.sort(rng.choice(max(99_999, 2 * count), count, replace=False) + 1)
        tasks.append((str(root / "train" / wnid), [f"{wnid}_{n}.JPEG" for n in numbers], seed, label))
    val = [(str(root / "val" / wnid), [f"ILSVRC2012_val_{label + 1:08d}.JPEG"], seed + 1, label)
           for label, wnid in enumerate(ids)]
    bar = ProgressBar(f"writing {files + classes:,} JPEGs to {root}")
    done = 0
    with contextlib.ExitStack() as stack:
        workers = os.cpu_count() or 1
        if files >= PARALLEL_MIN and workers > 1:
            import multiprocessing

            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")))
            results: Iterator = pool.map(_write_class, tasks + val, chunksize=8)
        else:
            results = map(_write_class, tasks + val)
        for task, _ in zip(tasks + val, results):
            done += len(task[1])
            bar(done, files + classes)
    atomic.write_text(marker, json.dumps(dict(spec, complete=True)))
    return False, _now() - start


# -- one start, in a fresh process ---------------------------------------------------------------------
def _child(spec: dict) -> None:
    """Run one start as the trainer would and write its timings to spec["out"] (the start processes' body)."""
    import torch

    from fastssl.config import load_config
    from fastssl.engine.precision import resolve_device
    from fastssl.loaders.datasets import build_dataset
    from fastssl.loaders.factory import build_train_loader

    if spec["backend"] == "dali":
        import fastssl.loaders.dali_backend  # noqa: F401  (imports before the start, like the others')
    if spec["backend"] == "ffcv":
        import fastssl.loaders.ffcv_backend  # noqa: F401
    cfg = load_config(None, spec["overrides"])
    device = resolve_device(cfg.train.device)
    ready = _now()
    dataset = build_dataset(cfg.data, "train")
    indexed = _now()
    loader = build_train_loader(cfg.load_settings(), dataset, device)
    loader.set_epoch(0)
    batches = iter(loader)
    batch = next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    done = _now()
    result = {"imports_s": ready - spec["spawned"], "start_s": done - ready, "index_s": indexed - ready,
              "loader_s": done - indexed, "header_reads": dataset.index.header_reads, "files": len(dataset),
              "views": [list(v.shape) for v in batch.views], "device": str(device)}
    Path(spec["out"]).write_text(json.dumps(result))
    del batches, batch, loader      # worker processes and pipelines end before the interpreter does


def run_start(backend: str, root: Path, index_dir: Path, out: Path, overrides: list[str]) -> dict:
    """One start of `backend` over ROOT in a fresh Python process with FASTSSL_INDEX_DIR=index_dir."""
    spec = {"backend": backend, "overrides": [*CONFIG, f"data.path={root}", f"loader.backend={backend}",
                                              *overrides], "out": str(out)}
    env = dict(os.environ, FASTSSL_INDEX_DIR=str(index_dir))
    spec["spawned"] = _now()
    proc = subprocess.run([sys.executable, "-m", "fastssl.bench.startup_bench", json.dumps(spec)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise RuntimeError(f"{backend} start failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def available(backends: list[str]) -> tuple[list[str], dict[str, str]]:
    """(backends whose package is installed, {backend: why it is skipped}), without importing them
    (importing ffcv here would change this process's torch threads)."""
    skipped = {b: f"{PACKAGES[b]} is not installed (pip install -e '.[{b}]')" for b in backends
               if b in PACKAGES and importlib.util.find_spec(PACKAGES[b]) is None}
    return [b for b in backends if b not in skipped], skipped


def convert_beton(root: Path, scratch: Path) -> tuple[Path, float, bool]:
    """ROOT/train as ROOT/train.beton with `fastssl data convert` (its defaults, JPEG), in its own
    process, once per tree: (path, seconds the conversion took, whether an earlier run made it)."""
    beton, marker = root / "train.beton", root / (MARKER + ".beton")
    tree = json.loads((root / MARKER).read_text())
    if beton.is_file() and marker.is_file():
        made = json.loads(marker.read_text())
        if made.get("tree") == tree:
            return beton, made["seconds"], True
    start = _now()
    env = dict(os.environ, FASTSSL_INDEX_DIR=str(scratch / "convert-index"))
    proc = subprocess.run([sys.executable, "-c", "import sys; from fastssl.cli import main; sys.exit(main())",
                           "data", "convert", "--src", f"imagefolder:{root / 'train'}", "--dst", str(beton)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fastssl data convert failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    from fastssl.loaders import atomic

    seconds = _now() - start
    atomic.write_text(marker, json.dumps({"tree": tree, "seconds": seconds}))
    return beton, seconds, False


# -- the index's pieces, in this process ---------------------------------------------------------------
@contextlib.contextmanager
def _index_dir(folder: Path) -> Iterator[None]:
    before = os.environ.get("FASTSSL_INDEX_DIR")
    os.environ["FASTSSL_INDEX_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FASTSSL_INDEX_DIR")
        else:
            os.environ["FASTSSL_INDEX_DIR"] = before


def measure_pieces(train: Path, scratch: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of each piece of an index load, `repeats` times: listing + stat, the header pass (all
    cores), a whole first and second `load_index`, reading and writing the index file."""
    from fastssl.loaders.datasets import index as ix

    out: dict[str, list[float]] = {k: [] for k in ("list+stat", "header reads", "first index", "second index",
                                                   "index read", "index write")}
    for r in range(repeats):
        with _index_dir(scratch / f"pieces-{r}"):
            t = _now()
            listing = ix.list_folder(train)
            out["list+stat"].append(_now() - t)
            paths = [os.path.join(train, f) for f in listing.files]
            t = _now()
            ix.read_headers(paths)
            out["header reads"].append(_now() - t)
            t = _now()
            index = ix.load_index(train)
            out["first index"].append(_now() - t)
            t = _now()
            ix.load_index(train)
            out["second index"].append(_now() - t)
            path = ix.index_path(train)
            t = _now()
            ix._read(path, train)          # the stored file alone: numpy load and the name lists
            out["index read"].append(_now() - t)
            t = _now()
            ix._write(index, path.with_name("written.npz"))
            out["index write"].append(_now() - t)
    return out


# -- the whole benchmark -------------------------------------------------------------------------------
@dataclass
class Row:
    benchmark: str
    backend: str         # a backend, or "index" for the in-process pieces
    phase: str           # first, second, pieces, extrapolated
    metric: str
    files: int           # train files the number is about (1,281,167 for extrapolations)
    median: float
    min: float
    max: float
    unit: str
    repeats: int
    note: str
    device: str
    torch: str
    triton: str
    cuda: str
    commit: str
    date: str


@dataclass
class Result:
    rows: list[Row]
    root: Path
    files: int
    classes: int
    tree: str            # how the tree came to be, for the notes
    beton: str           # how the .beton came to be, or ""
    skipped: dict[str, str]
    cores: int


def _spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.median(values)), float(np.min(values)), float(np.max(values))


def run(root: Path, files: int, classes: int, backends: list[str], repeats: int, overrides: list[str] = (),
        progress: Say = print) -> Result:
    """Write (or reuse) the tree, time every backend's first and second start `repeats` times (backends
    alternate within each repeat, so drift hits all alike), then the index's pieces."""

    from fastssl.config import load_config
    from fastssl.engine.precision import resolve_device

    from .harness import context

    reused, seconds = make_tree(root, files, classes, progress=progress)
    tree = (f"reused (its marker says {files:,} + {classes:,} files complete)" if reused else
            f"written in {seconds:.1f} s")
    progress(f"tree {root}: {tree}")
    runnable, skipped = available(list(backends))
    for backend, why in skipped.items():
        progress(f"{backend}: skipped, {why}")
    where = context(resolve_device(load_config(None, list(overrides)).train.device))
    starts: dict[tuple[str, str], list[dict]] = {(b, p): [] for b in runnable for p in ("first", "second")}
    with tempfile.TemporaryDirectory(prefix="fastssl-startup-") as tmp:
        scratch = Path(tmp)
        extra: dict[str, list[str]] = {b: [] for b in runnable}
        beton = ""
        if "ffcv" in runnable:
            path, spent, earlier = convert_beton(root, scratch)
            beton = (f"ffcv backend reads {path}, converted from the tree with `fastssl data convert` (JPEG) in "
                     f"{spent:.1f} s{' by an earlier run of this benchmark' if earlier else ''}, before its "
                     f"starts and not counted in them")
            progress(beton)
            extra["ffcv"] = [f"loader.beton={path}"]
        for r in range(repeats):
            for backend in runnable:
                index_dir = scratch / f"index-{backend}-{r}"
                index_dir.mkdir()
                for phase in ("first", "second"):
                    got = run_start(backend, root, index_dir, scratch / f"{backend}-{r}-{phase}.json",
                                    [*extra[backend], *overrides])
                    starts[(backend, phase)].append(got)
                    progress(f"{backend} {phase} start {r + 1}/{repeats}: {got['start_s']:.2f} s (index "
                             f"{got['index_s']:.2f} s, {got['header_reads']:,} headers read; loader + first batch "
                             f"{got['loader_s']:.2f} s), imports {got['imports_s']:.2f} s")
                shutil.rmtree(index_dir)
        progress("timing the index's pieces in this process")
        pieces = measure_pieces(root / "train", scratch, repeats)
    rows = _rows(starts, pieces, files, repeats, where)
    return Result(rows, root, files, classes, tree, beton, skipped, os.cpu_count() or 1)


def _rows(starts: dict[tuple[str, str], list[dict]], pieces: dict[str, list[float]], files: int, repeats: int,
          where: dict[str, str]) -> list[Row]:
    scale = IMAGENET_TRAIN / files

    def row(backend, phase, metric, n, values, unit, note=""):
        return Row("startup", backend, phase, metric, n, *_spread(values), unit, len(values), note, **where)

    rows = []
    backends = list(dict.fromkeys(b for b, _ in starts))
    for backend in backends:
        for phase in ("first", "second"):
            got = starts[(backend, phase)]
            start = [g["start_s"] for g in got]
            target = ""
            if phase == "second":
                met = np.median(start) < TARGET_S
                target = (f"target < {TARGET_S:g} s at {TARGET_FILES:,} files: {'met' if met else 'not met'}"
                          if files == TARGET_FILES else f"target applies at {TARGET_FILES:,} files")
            rows.append(row(backend, phase, "start", files, start, "s",
                            "; ".join(t for t in (target, TENSOR_NOTE if backend == "tensor" else "") if t)))
            rows.append(row(backend, phase, "index", files, [g["index_s"] for g in got], "s", "build_dataset"))
            rows.append(row(backend, phase, "loader", files, [g["loader_s"] for g in got], "s",
                            "build_train_loader + first batch"))
            rows.append(row(backend, phase, "imports", files, [g["imports_s"] for g in got], "s",
                            "process start + imports, before the start"))
            rows.append(row(backend, phase, "header reads", files, [g["header_reads"] for g in got], "files"))
            if phase == "first":
                rows.append(row(backend, phase, "files/s", files, [files / g["index_s"] for g in got], "files/s",
                                "files / first-start index time"))
    per_file = {k: [v / files for v in vs] for k, vs in pieces.items()}
    rows += [row("index", "pieces", "list+stat", files, [v * 1e6 for v in per_file["list+stat"]], "us/file"),
             row("index", "pieces", "header reads", files, [files / v for v in pieces["header reads"]], "files/s",
                 f"all {os.cpu_count() or 1} cores"),
             row("index", "pieces", "first index", files, pieces["first index"], "s", "load_index, no index"),
             row("index", "pieces", "second index", files, pieces["second index"], "s", "load_index, index present"),
             row("index", "pieces", "index read", files, pieces["index read"], "s", "the stored file alone"),
             row("index", "pieces", "index write", files, pieces["index write"], "s")]
    rows += [row("index", "extrapolated", "first index", IMAGENET_TRAIN, [v * scale for v in pieces["first index"]],
                 "s", "in-process first load_index, linear in files"),
             row("index", "extrapolated", "second index", IMAGENET_TRAIN,
                 [v * scale for v in pieces["second index"]], "s", "in-process second load_index, linear in files")]
    for backend in backends:
        for phase in ("first", "second"):
            got = starts[(backend, phase)]
            # The index part grows with the files; the loader's build + first batch is held as measured,
            # except the tensor backend's, which decodes every file.
            loader_scale = scale if backend == "tensor" else 1.0
            rows.append(row(backend, "extrapolated", f"{phase} start", IMAGENET_TRAIN,
                            [g["index_s"] * scale + g["loader_s"] * loader_scale for g in got], "s",
                            "index x files; loader + first batch " + ("x files (decodes all)" if backend == "tensor"
                                                                      else "as measured")))
    return rows


# -- outputs -------------------------------------------------------------------------------------------
def _at(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    return {(r.backend, r.phase, r.metric): r for r in rows}


def markdown(result: Result) -> str:
    rows, files = result.rows, result.files
    at, first = _at(rows), rows[0]
    backends = [b for b in dict.fromkeys(r.backend for r in rows) if b != "index"]
    repeats = first.repeats

    def spread(r: Row, fmt: str = ".2f") -> str:
        return f"{r.median:{fmt}} ({r.min:{fmt}}-{r.max:{fmt}})"

    lines = [f"# Start-up: first and second start per backend, {files:,} files at ImageNet's layout", "",
             f"{first.device}; torch {first.torch}, triton {first.triton}, CUDA {first.cuda}; commit {first.commit}; "
             f"{first.date}", "",
             f"Tree: {result.root}/train/<wnid>/<wnid>_<n>.JPEG, {files:,} JPEGs of 32-64 px a side in "
             f"{result.classes:,} class folders, plus val/ with one file per class; {result.tree}. Each start is "
             f"a fresh Python process (imports reported apart), timed from just before `build_dataset` to the "
             f"first batch the loader yields (image_size 32, batch 64, 2 views, 2 workers); first start: "
             f"FASTSSL_INDEX_DIR empty, every header read; second start: the index of the first. Median "
             f"(min-max) of {repeats} pair(s), backends alternating; page cache warm (not dropped); "
             f"{result.cores} CPU cores.", ""]
    if result.beton:
        lines += [f"The {result.beton}.", ""]
    for backend, why in result.skipped.items():
        lines += [f"Skipped {backend}: {why}.", ""]
    target_here = files == TARGET_FILES
    lines += [f"**Target: a second start under {TARGET_S:g} s for {TARGET_FILES:,} files**"
              + ("" if target_here else f" (this run has {files:,} files, so the column only says how this "
                 "size compares)") + ".", "",
              "| backend | first start s | headers read | index s | files/s | second start s | headers read | "
              "index s | loader + first batch s | imports s | second < 5 s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in backends:
        f = {m: at[(b, "first", m)] for m in ("start", "header reads", "index", "files/s")}
        s = {m: at[(b, "second", m)] for m in ("start", "header reads", "index", "loader", "imports")}
        met = "met" if s["start"].median < TARGET_S else "not met"
        lines.append(f"| {b} | {spread(f['start'])} | {f['header reads'].median:,.0f} | {f['index'].median:.2f} | "
                     f"{f['files/s'].median:,.0f} | {spread(s['start'])} | {s['header reads'].median:,.0f} | "
                     f"{s['index'].median:.2f} | {s['loader'].median:.2f} | {s['imports'].median:.2f} | {met} |")
    lines += ["", "files/s: files / the first start's index time (list + stat + every header + the index "
              "written). loader + first batch: `build_train_loader` and its first batch (DataLoader workers, "
              "DALI pipeline build, ffcv's .beton opened, its labels compared and its decode loop JIT-compiled; the "
              "tensor backend's decode of every file)."]
    if "tensor" in backends:
        lines += ["", f"Note: {TENSOR_NOTE}; the index part of its start is the `index s` column."]
    p = {m: at[("index", "pieces", m)] for m in ("list+stat", "header reads", "first index", "second index",
                                                 "index read", "index write")}
    lines += ["", f"## The index's pieces (in one process, {files:,} files)", "",
              "| piece | median (min-max) |", "|---|---|",
              f"| list + stat | {spread(p['list+stat'])} us/file |",
              f"| header reads, {result.cores} cores | {spread(p['header reads'], ',.0f')} files/s |",
              f"| first `load_index` (no index) | {spread(p['first index'])} s |",
              f"| second `load_index` (index present) | {spread(p['second index'])} s |",
              f"| reading the index file | {spread(p['index read'], '.3f')} s |",
              f"| writing the index file | {spread(p['index write'], '.3f')} s |"]
    e1, e2 = at[("index", "extrapolated", "first index")], at[("index", "extrapolated", "second index")]
    lines += ["", f"## Extrapolated to ImageNet's {IMAGENET_TRAIN:,} training files", "",
              f"Linear in files from the pieces above (same per-file costs, warm cache): the index of a first start "
              f"**{e1.median:,.1f} s** ({IMAGENET_TRAIN / e1.median:,.0f} files/s), of a second start "
              f"**{e2.median:,.1f} s**, of which listing and stat-ing the files alone take "
              f"{p['list+stat'].median * 1e-6 * IMAGENET_TRAIN:,.1f} s. Per backend, the start process's index "
              f"time scaled by files plus its loader + first batch as measured (the tensor backend's scaled too: "
              f"it decodes every file):", "",
              "| backend | first start s | second start s | second < 5 s |", "|---|---|---|---|"]
    for b in backends:
        x1, x2 = at[(b, "extrapolated", "first start")], at[(b, "extrapolated", "second start")]
        lines.append(f"| {b} | {x1.median:,.1f} | {x2.median:,.1f} | {'yes' if x2.median < TARGET_S else 'no'} |")
    lines += ["", "Real ImageNet JPEGs average about 110 KB, but a header read stops at the start-of-frame "
              "marker (the first few KB); on a cold disk each file adds its seek or network latency, which a "
              "warm page cache hides."]
    return "\n".join(lines) + "\n"


def plot(result: Result, path: Path) -> None:
    """Bars: first and second start per backend, min-max whiskers, the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastssl.loaders import atomic

    at = _at(result.rows)
    backends = [b for b in dict.fromkeys(r.backend for r in result.rows) if b != "index"]
    x = np.arange(len(backends))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for offset, phase, colour in ((-0.2, "first", "#c44e52"), (0.2, "second", "#4c72b0")):
        got = [at[(b, phase, "start")] for b in backends]
        medians = np.array([r.median for r in got])
        ax.bar(x + offset, medians, 0.4, label=f"{phase} start", color=colour,
               yerr=[medians - [r.min for r in got], [r.max for r in got] - medians], capsize=4)
    ax.axhline(TARGET_S, color="black", linestyle="--", linewidth=1, label=f"target {TARGET_S:g} s (second)")
    ax.set_xticks(x, backends)
    ax.set(title=f"Start-up to the first batch, {result.files:,} files", ylabel="s")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)


def write_all(result: Result, out_dir: Path) -> list[Path]:
    """startup_<device>.csv, .md and .png in out_dir."""
    from fastssl.loaders import atomic

    from .harness import device_slug

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"startup_{device_slug(result.rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    atomic.write_csv(paths[0], [f.name for f in fields(Row)], (asdict(r) for r in result.rows))
    atomic.write_text(paths[1], markdown(result))
    plot(result, paths[2])
    return paths


if __name__ == "__main__":      # one start, in the fresh process run_start made
    _child(json.loads(sys.argv[1]))
