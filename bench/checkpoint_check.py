"""`fastssl bench checkpoint`: what proving a checkpoint's bytes costs, at ResNet-50 size.

Why: torch.load never checks the CRC-32s in torch.save's zip, so flipped bytes load as a silently
different network. fastssl's checkpoints hold the CRC-32 of every tensor's bytes, computed when saved
and checked on the loaded tensors; the zip's own CRC-32s cover the pickled structure; a checkpoint
written before the digests is checked by the zip's CRC-32s of every entry (fastssl/checkpoint.py).

The checkpoint: a ResNet-50 at width 1 with its projector (configs/imagenet_resnet50.yaml's model) and
its LARS momentum after one step, what a real run's checkpoint mostly holds. In one process, each
repetition saves and loads it every way in turn, so drift hits all alike: `torch` is the baseline,
torch.save / torch.load(weights_only=True); `checked` saves what save_checkpoint writes (the digests
computed, then torch.save) and loads with load_checkpoint; `no digests` loads a file of the
baseline's kind (an older checkpoint) with load_checkpoint, which then reads every zip entry a second
time. Saves go to the page cache without the atomic write's fsync, which costs the same either way;
loads read a file just written, also from the page cache: the check's cost is CPU time (one CRC-32
pass over the tensors), so the claim is the ratio to the baseline (per repetition, paired), and MB/s
is secondary. The second read of `no digests` is nearly free from the page cache; from a
disk or a network file system it costs a whole read more, which the digests avoid.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from fastssl.checkpoint import FORMAT, load_checkpoint, seal
from fastssl.config import ModelConfig, OptimConfig
from fastssl.loaders import atomic
from fastssl.models import build_model
from fastssl.optim import build_optimizer

from .harness import Row, context, device_slug, plot_bars, summarize, write_csv

BASELINE, CHECKED, OLD_FILE = "torch", "checked", "no digests"
MODEL = ModelConfig(arch="resnet50", width=1.0, cifar_stem=False, projector_hidden=2048, projector_out=128)
REPS, WARMUP = 7, 1


def checkpoint_state(model_cfg: ModelConfig = MODEL) -> dict:
    """The model's and the LARS optimizer's state after one step on random gradients (momentum buffers)."""
    torch.manual_seed(0)
    model = build_model(model_cfg)
    optimizer = build_optimizer(OptimConfig(), model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _save(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)


def _one_rep(state: dict, folder: Path) -> dict[tuple[str, str], float]:
    """Seconds of each (provider, mode), in turn: the saves write the files the loads then read."""
    plain, checked = folder / "plain.pt", folder / "checked.pt"
    return {
        (BASELINE, "save"): _timed(lambda: _save({"format": FORMAT, **state}, plain)),
        (CHECKED, "save"): _timed(lambda: _save(seal(state), checked)),
        (BASELINE, "load"): _timed(lambda: torch.load(plain, map_location="cpu", weights_only=True)),
        (CHECKED, "load"): _timed(lambda: load_checkpoint(checked)),
        (OLD_FILE, "load"): _timed(lambda: load_checkpoint(plain)),
    }


def _rows(samples: dict[tuple[str, str], list[float]], shape: str, megabytes: float, where: dict) -> list[Row]:
    """Per (provider, mode): time in ms, MB/s, and for the checked ones the paired ratio to the baseline."""
    rows = []
    for (provider, mode), seconds in samples.items():
        series = [("time", [s * 1e3 for s in seconds], "ms"), ("throughput", [megabytes / s for s in seconds], "MB/s")]
        if provider != BASELINE:
            series.append(("vs torch", [s / b for s, b in zip(seconds, samples[(BASELINE, mode)])], "x"))
        for metric, values, unit in series:
            rows.append(Row("checkpoint_check", provider, shape, "fp32", mode, metric, *summarize(values), unit,
                            **where))
    return rows


def measure(reps: int = REPS, warmup: int = WARMUP, progress=print, model_cfg: ModelConfig = MODEL) -> list[Row]:
    """Rows of time (ms), throughput (MB/s) and, for the checked providers, the paired ratio to torch's."""
    state = checkpoint_state(model_cfg)
    with tempfile.TemporaryDirectory(prefix="checkpoint-check-") as scratch:
        samples: dict[tuple[str, str], list[float]] = {}
        for rep in range(warmup + reps):
            times = _one_rep(state, Path(scratch))
            if rep >= warmup:
                for key, seconds in times.items():
                    samples.setdefault(key, []).append(seconds)
            progress(f"rep {rep + 1}/{warmup + reps}{' (warm-up)' if rep < warmup else ''}: "
                     + ", ".join(f"{p} {m} {s * 1e3:.0f} ms" for (p, m), s in times.items()))
        megabytes = (Path(scratch) / "checked.pt").stat().st_size / 1e6
    shape = f"{model_cfg.arch} width {model_cfg.width:g} + projector + LARS momentum, {megabytes:.3g} MB"
    return _rows(samples, shape, megabytes, context(torch.device("cpu")))


def write_markdown(rows: list[Row], path: Path) -> None:
    value = {(r.provider, r.mode, r.metric): r for r in rows}
    first = rows[0]
    lines = ["# Checkpoint integrity check: cost against plain torch.save / torch.load", "",
             f"{first.device}; torch {first.torch}; commit {first.commit}; {first.date}", "",
             f"Checkpoint: {first.shape}.", "",
             "| operation | provider | ms median (p20-p80) | vs torch (p20-p80) | MB/s median |",
             "|---|---|---|---|---|"]
    for r in rows:
        if r.metric != "time":
            continue
        ratio = value.get((r.provider, r.mode, "vs torch"))
        shown = f"{ratio.median:.2f}x ({ratio.p20:.2f}-{ratio.p80:.2f})" if ratio else "1 (baseline)"
        lines.append(f"| {r.mode} | {r.provider} | {r.median:,.0f} ({r.p20:,.0f}-{r.p80:,.0f}) | {shown} | "
                     f"{value[(r.provider, r.mode, 'throughput')].median:,.0f} |")
    lines += ["", " ".join(__doc__.split("\n\n")[2].split()), ""]
    atomic.write_text(path, "\n".join(lines))


def write_all(rows: list[Row], out_dir: Path) -> list[Path]:
    """checkpoint_check_<device>.{csv,md,png}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"checkpoint_check_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    write_markdown(rows, paths[1])
    plot_bars([replace(r, shape=r.mode) for r in rows if r.metric == "time"], paths[2],
              "Checkpoint save / load, with and without the check")
    return paths

