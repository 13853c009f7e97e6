"""Every head on equal footing: the same encoder, data, schedule and budget, trained once per
variant (head x tricks), then scored by kNN and by a linear probe on the frozen features, next to the
random-init encoder every head must beat.

Each variant is one `Trainer` run in its own folder under `work`; a variant whose folder already holds
its result is not run again, so an interrupted comparison continues where it stopped. One seed per
variant: the +- column is the 95% binomial interval of the test-set estimate (10,000 images), not the
spread over seeds, which this budget cannot pay for.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
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
}
DEFAULT_VARIANTS = (list(HEADS) + [f"{h} + task aug" for h in HEADS] + [f"{h} + task aug + rot pred" for h in HEADS]
                    + ["byol + task aug + rot pred + cutmix"])


def small_cpu_run(data: str, epochs: int) -> list[str]:
    """The base config shrunk to the CPU: width 1/8, a 256 -> 64 projector (and predictor), batch 256."""
    return [f"data.path={data}", "model.width=0.125", "model.projector_hidden=256", "model.projector_out=64",
            "method.predictor_hidden=256", "loader.batch_size=256", f"train.epochs={epochs}",
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


def write_all(results: list[Result], out: Path, command: str, ctx: dict[str, str]) -> list[Path]:
    """CSV (with ctx: device, versions, commit and date, taken when the runs started), Markdown table, PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out.with_suffix(".csv"), out.with_suffix(".md"), out.with_suffix(".png")
    atomic.write_csv(csv_path, list(asdict(results[0])) + list(ctx), ({**asdict(r), **ctx} for r in results))
    base = next((r for r in results if r.variant == RANDOM_INIT), None)
    lines = ["# Heads compared on CIFAR-10 JPEG (CPU budget)", "",
             f"{ctx['device']}; torch {ctx['torch']}; commit {ctx['commit']}; {ctx['date']} (of this command: "
             "variants it found finished in its work folder were trained by an earlier one)", "",
             f"Command: `{command}`", "",
             "| variant | kNN top-1 | linear top-1 | beats random init (both) | training time |",
             "|---|---|---|---|---|"]
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
