"""Every head on equal footing: the same encoder, data, schedule and budget, trained once per
variant (head x tricks), then scored by kNN and by a linear probe on the frozen features, next to the
random-init encoder every head must beat.

Each variant is one `Trainer` run in its own folder under `work`; a variant whose folder already holds
its result is not run again, so an interrupted comparison continues where it stopped. One seed per
variant: the +- column is the 95% binomial interval of the test-set estimate (10,000 images), not the
spread over seeds, which this budget cannot pay for.

Variants trained later (a method added since) join an earlier comparison without retraining it:
`python -m fastssl.bench.head_comparison merge NEW INTO` adds the rows of the comparison NEW (written
by `fastssl bench heads --variants ... --out NEW`) to INTO's CSV, Markdown and PNG; the Markdown then
says which command, commit and date produced which rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fastssl.config import Config, load_config
from fastssl.engine.trainer import Trainer
from fastssl.evaluation import run_protocol
from fastssl.loaders import atomic
from fastssl.methods import methods

RANDOM_INIT = "random init"
# Variant name parts -> the config fragments they layer (under --configs), the same files the README's
# experiment commands use: configs/heads/<head>.yaml, configs/tricks/*.yaml.
HEADS = tuple(methods())   # every registered method, by name
TRICKS = {
    "": [],
    "+ task aug": ["tricks/task_aug.yaml"],
    "+ task aug + rot pred": ["tricks/task_aug.yaml", "tricks/rot_pred.yaml"],
    "+ task aug + rot pred + cutmix": ["tricks/task_aug.yaml", "tricks/rot_pred.yaml", "tricks/cutmix.yaml"],
    "+ multi-crop": ["tricks/multicrop.yaml"],
    "+ joint bn": ["tricks/joint_bn.yaml"],
}
DEFAULT_VARIANTS = (list(HEADS) + [f"{h} + task aug" for h in HEADS] + [f"{h} + task aug + rot pred" for h in HEADS]
                    + ["byol + task aug + rot pred + cutmix"])


def small_cpu_run(data: str, epochs: int) -> list[str]:
    """The base config shrunk to the CPU: width 1/8, a 256 -> 64 projector (and predictor), batch 256."""
    return [f"data.path={data}", "model.width=0.125", "model.projector_hidden=256", "model.projector_out=64",
            "loader.batch_size=256", f"train.epochs={epochs}",
            "optim.warmup_epochs=0.5", "train.log_every=20", "train.ckpt_every=0", "knn.every_epochs=0"]


def variant_files(name: str, configs: Path) -> list[Path]:
    """`head` or `head + trick ...` -> the config fragments it layers on the base config."""
    head, _, tricks = name.partition(" ")
    if head not in HEADS or tricks not in TRICKS:
        raise ValueError(f"variant {name!r}: must be '{RANDOM_INIT}' or a head ({', '.join(HEADS)}) followed by "
                         f"nothing or one of: {' | '.join(t for t in TRICKS if t)}")
    return [configs / "heads" / f"{head}.yaml"] + [configs / t for t in TRICKS[tricks]]


@dataclass
class Result:
    variant: str
    knn_top1: float
    linear_top1: float
    knn_ci95: float
    linear_ci95: float
    train_seconds: float
    steps: int
    knn_random_init: float


def _ci95(p: float, n: int) -> float:
    return 1.96 * (p * (1 - p) / n) ** 0.5


def run_variant(name: str, base: list[str], config: str, configs: Path, work: Path, progress=print) -> Result:
    folder = work / name.replace(" ", "_").replace("+", "plus")
    done = folder / "comparison.json"
    if done.exists():
        return Result(**json.loads(done.read_text()))
    cfg: Config = load_config([config] + ([] if name == RANDOM_INIT else variant_files(name, configs)), base)
    tick = time.perf_counter()
    trainer = Trainer(cfg, folder, resume=(folder / "last.pt").exists())
    if name == RANDOM_INIT:
        knn = knn_start = trainer._evaluate(epoch=0)
        trainer.save()
        steps = 0
    else:
        fit = trainer.fit()
        knn, knn_start, steps = fit.knn_top1, fit.knn_start, fit.steps
    seconds = time.perf_counter() - tick
    _, linear, _ = run_protocol(folder / "last.pt", "linear", progress=lambda _: None)
    n_test = linear["num_test"]
    result = Result(name, knn, linear["top1"], _ci95(knn, n_test), _ci95(linear["top1"], n_test), seconds, steps,
                    knn_start)
    atomic.write_text(done, json.dumps(asdict(result), indent=2) + "\n")
    progress(f"{name}: knn {knn:.4f} linear {linear['top1']:.4f} ({seconds:.0f} s training)")
    return result


@dataclass
class Source:
    """One command that produced rows of a comparison: its context columns (device, versions, commit,
    date) and its command line."""

    ctx: dict[str, str]
    command: str


def write_all(results: list[Result], out: Path, command: str, ctx: dict[str, str]) -> list[Path]:
    """CSV (with ctx: device, versions, commit and date, taken when the runs started), Markdown table, PNG."""
    source = Source(ctx, command)
    return _write([(r, source) for r in results], out)


def _write(rows: list[tuple[Result, Source]], out: Path, notes: list[str] = ()) -> list[Path]:
    """The three files from rows that may come from several commands (merge)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out.with_suffix(".csv"), out.with_suffix(".md"), out.with_suffix(".png")
    results = [r for r, _ in rows]
    atomic.write_csv(csv_path, list(asdict(results[0])) + list(rows[0][1].ctx),
                     ({**asdict(r), **source.ctx} for r, source in rows))
    sources: list[Source] = []
    for _, source in rows:
        if source not in sources:
            sources.append(source)
    lines = ["# Heads compared on CIFAR-10 JPEG (CPU budget)", ""]
    for source in sources:
        if len(sources) > 1:
            lines += [f"Rows {', '.join(r.variant for r, s in rows if s == source)}:", ""]
        ctx = source.ctx
        lines += [f"{ctx['device']}; torch {ctx['torch']}; commit {ctx['commit']}; {ctx['date']} (of this command: "
                  "variants it found finished in its work folder were trained by an earlier one)", "",
                  f"Command: `{source.command}`", ""]
    for note in notes:
        lines += [note, ""]
    lines += ["| variant | kNN top-1 | linear top-1 | beats random init (both) | training time |",
              "|---|---|---|---|---|"]
    base = next((r for r in results if r.variant == RANDOM_INIT), None)
    for r in results:
        beats = "-" if base is None or r is base else (
            "yes" if r.knn_top1 > base.knn_top1 + base.knn_ci95 and r.linear_top1 > base.linear_top1 + base.linear_ci95
            else "no")
        lines.append(f"| {r.variant} | {r.knn_top1:.4f} ± {r.knn_ci95:.4f} | {r.linear_top1:.4f} ± {r.linear_ci95:.4f} "
                     f"| {beats} | {r.train_seconds / 60:.1f} min ({r.steps} steps) |")
    lines += ["", "± is the 95% binomial interval of the test estimate (one seed per variant, not a seed spread)."]
    atomic.write_text(md_path, "\n".join(lines) + "\n")
    _plot(results, png_path)
    return [csv_path, md_path, png_path]


def read_comparison(out: Path) -> list[tuple[Result, Source]]:
    """The rows of a comparison written by write_all (or merge): each result with its source, the
    context from the CSV's columns and the command from the Markdown's `Command:` line under the header
    line that names the row's commit and date."""
    commands, stamp = {}, None
    for line in out.with_suffix(".md").read_text().splitlines():
        header = re.search(r"; commit (\S+); (\S+)", line)
        if header:
            stamp = header.groups()
        command = re.fullmatch(r"Command: `(.*)`", line)
        if command and stamp:
            commands[stamp] = command.group(1)
    types = {f.name: f.type for f in fields(Result)}
    rows, sources = [], {}
    with open(out.with_suffix(".csv"), newline="") as f:
        for record in csv.DictReader(f):
            values = {name: (str if kind == "str" else int if kind == "int" else float)(record.pop(name))
                      for name, kind in types.items()}
            stamp = (record["commit"], record["date"])
            if stamp not in commands:
                raise ValueError(f"{out.with_suffix('.md')}: no `Command:` line for commit {stamp[0]} of {stamp[1]}")
            source = sources.setdefault(stamp, Source(record, commands[stamp]))
            rows.append((Result(**values), source))
    return rows


def merge(new: Path, into: Path, notes: list[str] = (), progress=print, replace: tuple[str, ...] = ()) -> list[Path]:
    """INTO's rows, then those of NEW's variants INTO lacks (a variant in both keeps INTO's row; a
    differing NEW one is reported), written over INTO's three files. A variant in `replace` takes NEW's
    row in INTO's place instead (retrained after a change to its method)."""
    kept = read_comparison(into)
    known = {r.variant: r for r, _ in kept}
    fresh = read_comparison(new)
    if not set(replace) <= {r.variant for r, _ in fresh} & set(known):
        raise ValueError(f"--replace {', '.join(sorted(replace))}: each must be a variant of both {new} and {into}")
    swapped = {r.variant: (r, source) for r, source in fresh if r.variant in replace}
    kept = [swapped.get(r.variant, (r, source)) for r, source in kept]
    added = []
    for result, source in fresh:
        old = known.get(result.variant)
        if result.variant in replace:
            progress(f"{result.variant}: replaced (kNN {old.knn_top1:.4f} -> {result.knn_top1:.4f}, "
                     f"linear {old.linear_top1:.4f} -> {result.linear_top1:.4f})")
        elif old is None:
            added.append((result, source))
        elif (old.knn_top1, old.linear_top1) != (result.knn_top1, result.linear_top1):
            progress(f"{result.variant}: kept the earlier row (kNN {old.knn_top1:.4f}, linear {old.linear_top1:.4f}); "
                     f"the new one differs (kNN {result.knn_top1:.4f}, linear {result.linear_top1:.4f})")
        else:
            progress(f"{result.variant}: the new row equals the earlier one (kNN and linear), kept once")
    if not added and not swapped:
        raise ValueError(f"{new}: no variant that {into} lacks")
    return _write(kept + added, into, notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastssl.bench.head_comparison",
                                     description="Add the rows of one comparison to another (no training).")
    verbs = parser.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("merge", help="NEW's variants that INTO lacks join INTO's CSV, Markdown and PNG")
    add.add_argument("new", type=Path, help="output stem of the comparison with the new rows (no suffix)")
    add.add_argument("into", type=Path, help="output stem of the comparison to add them to (no suffix)")
    add.add_argument("--note", action="append", default=[], help="a paragraph for the Markdown, above the table")
    add.add_argument("--replace", action="append", default=[], metavar="VARIANT",
                     help="a variant in both whose NEW row takes INTO's place (retrained after a change)")
    args = parser.parse_args(argv)
    paths = merge(args.new, args.into, args.note, progress=lambda line: print(line, file=sys.stderr),
                  replace=tuple(args.replace))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


def _plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.38 * len(results)))
    y = np.arange(len(results))[::-1]   # first variant at the top
    for offset, key, colour in ((0.2, "knn", "#4c72b0"), (-0.2, "linear", "#dd8452")):
        values = [getattr(r, f"{key}_top1") for r in results]
        errors = [getattr(r, f"{key}_ci95") for r in results]
        ax.barh(y + offset, values, 0.4, xerr=errors, capsize=2, color=colour, label=key)
    ax.set_yticks(y, [r.variant for r in results], fontsize=8)
    ax.set(xlabel="top-1 (95% interval of the test estimate)",
           title="CIFAR-10 JPEG, width-1/8 ResNet-18, one budget")
    ax.set_xlim(0, 1.35 * max(max(r.knn_top1, r.linear_top1) for r in results))   # room for the legend
    ax.legend(loc="lower right", framealpha=0.9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
