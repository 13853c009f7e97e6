"""CSV, Markdown and PNG for a kernel microbenchmark's rows: one kernel ("the subject") against baselines.

Rows follow one convention (bench/kernel_timing.py measures them): metric "time" in ms per mode,
optional "peak extra memory" (B) and "TFLOP/s" or "GB/s" per mode, and per-input metrics such as "saved for
backward" (B) or "rel error ..." (rel); a row whose unit is "OOM" ran out of memory and shows as OOM.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .harness import Row, device_slug, write_csv
from fastssl.loaders import atomic

PER_MODE = ("time", "peak extra memory", "TFLOP/s", "GB/s")
MIB = 2 ** 20


def cell(row: Row | None) -> str:
    """One cell: OOM, a missing measurement, or the median in the unit's natural form."""
    if row is None:
        return "—"
    if row.unit == "OOM":
        return "OOM"
    if row.unit == "ms":
        return f"{_ms(row.median)} [{_ms(row.p20)}, {_ms(row.p80)}]"
    if row.unit == "B":
        return f"{row.median / MIB:,.2f}"
    if row.unit == "rel":
        return f"{row.median:.1e}"
    return f"{row.median:,.1f}"


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _measured(row: Row | None) -> bool:
    return row is not None and row.unit != "OOM" and math.isfinite(row.median)


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def speedup(baseline: Row | None, subject: Row | None) -> str:
    """How many times faster the subject's median time is than the baseline's (2 significant digits below 0.1)."""
    if not (_measured(baseline) and _measured(subject)):
        return "—"
    ratio = baseline.median / subject.median
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def method_notes(rows: list[Row], reps: int, warmup: int) -> list[str]:
    """How every time was taken, and on a CPU what its numbers cannot show."""
    notes = [f"Each time: {reps} timed repetitions after {warmup} untimed warm-up ones, all after an untimed "
             "first call (the correctness check, where compilation and autotuning happen); CUDA events on a GPU, "
             "perf_counter on a CPU; inputs cycle through distinct buffers totalling more than twice the "
             "last-level cache. backward = `torch.autograd.grad` alone, after an untimed forward of its own."]
    if rows[0].device.startswith("CPU"):
        notes += ["", "**CPU run: Triton runs in its interpreter (numpy) and the torch providers on CPU torch, so "
                  "these times show only that every path runs; they mean nothing as absolute numbers or as "
                  "speedups. Peak memory and TFLOP/s need CUDA; saved for backward is measured on every device.**"]
    return notes


def floors(device: str) -> dict[str, float]:
    """Peak dense TFLOP/s a Triton kernel is shown against (H100/H200 SXM; none known for other devices).

    bf16: tensor cores, as measured (GPU.md; 989 on the datasheet). fp32: the kernels follow torch's
    TF32 switch; off (torch's default) it is IEEE FMA on CUDA cores, 67 on the datasheet; on, TF32
    tensor cores, 495 on the datasheet.
    """
    if "H100" not in device and "H200" not in device:
        return {}
    return {"bf16": 800.0, "fp32": 495.0 if torch.backends.cuda.matmul.allow_tf32 else 67.0}


def flops_notes(rows: list[Row], counted: str) -> list[str]:
    """On a GPU, what the TFLOP/s column counts (`counted`) and the floor it is shown against."""
    if rows[0].device.startswith("CPU"):
        return []
    floor = floors(rows[0].device)
    return ["", f"TFLOP/s count algorithmic FLOPs: {counted}; % of floor against "
            + (", ".join(f"{dt} {tf:g} TFLOP/s" for dt, tf in floor.items()) if floor
               else "no floor (none known for this device)")
            + ". fp32 matmuls: " + ("TF32 allowed" if torch.backends.cuda.matmul.allow_tf32 else
                                    "IEEE fp32 on every provider (TF32 off, torch's default)") + "."]


def write_all(rows: list[Row], out_dir: Path, kernel: str, title: str, notes: list[str], subject: str,
              floors: dict[str, float]) -> list[Path]:
    """kernels_<kernel>_<device>.{csv,md,png}: named after the device, so CPU and GPU results sit side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"kernels_{kernel}_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    write_markdown(rows, paths[1], title, notes, subject, floors)
    plot(rows, paths[2], title, "forward+backward")
    return paths


def write_markdown(rows: list[Row], path: Path, title: str, notes: list[str], subject: str,
                   floors: dict[str, float]) -> None:
    """Per (shape, dtype, mode): each provider's time, the subject's speedups, TFLOP/s and peak memory;
    then per (shape, dtype, provider) the remaining metrics (memory saved, errors).

    floors: dtype -> the device's peak TFLOP/s (or GB/s) that the subject's rate is shown against.
    """
    at = {(r.provider, r.shape, r.dtype, r.mode, r.metric): r for r in rows}
    timed = [r for r in rows if r.metric == "time"]
    providers = _ordered(r.provider for r in timed)
    baselines = [p for p in providers if p != subject] if subject in providers else []
    has = {m: any(r.metric == m for r in rows) for m in PER_MODE}
    first = rows[0]
    lines = [f"# {title}", "", *notes, "",
             f"{first.device}; torch {first.torch}, triton {first.triton}, CUDA {first.cuda}; "
             f"commit {first.commit}; {first.date}", "",
             "Time in ms, median [p20, p80]" + ("; peak extra memory in MiB" if has["peak extra memory"] else "")
             + ".", ""]
    head = ["shape", "dtype", "mode", *providers, *(f"{subject} vs {b}" for b in baselines)]
    rate = next((m for m in ("TFLOP/s", "GB/s") if has[m]), None)
    if rate:
        head.append(f"{subject} {rate} (% of floor)")
    if has["peak extra memory"]:
        head.append("peak extra MiB " + " / ".join(providers))
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, dtype, mode in _ordered((r.shape, r.dtype, r.mode) for r in timed):
        times = {p: at.get((p, shape, dtype, mode, "time")) for p in providers}
        out = [shape, dtype, mode, *(cell(times[p]) for p in providers),
               *(speedup(times[b], times[subject]) for b in baselines)]
        if rate:
            achieved = at.get((subject, shape, dtype, mode, rate))
            share = f" ({100 * achieved.median / floors[dtype]:.0f}%)" if _measured(achieved) and dtype in floors else ""
            out.append(cell(achieved) + share)
        if has["peak extra memory"]:
            out.append(" / ".join(cell(at.get((p, shape, dtype, mode, "peak extra memory"))) for p in providers))
        lines.append("| " + " | ".join(out) + " |")
    other = [r for r in rows if r.metric not in PER_MODE]
    metrics = _ordered(r.metric for r in other)
    if metrics:
        per_input = {(r.shape, r.dtype, r.provider, r.metric): r for r in other}
        names = [m + (" (MiB)" if any(r.unit == "B" for r in other if r.metric == m) else "") for m in metrics]
        lines += ["", "| shape | dtype | provider | " + " | ".join(names) + " |",
                  "|" + "---|" * (3 + len(metrics))]
        for shape, dtype, provider in _ordered((r.shape, r.dtype, r.provider) for r in other):
            lines.append(f"| {shape} | {dtype} | {provider} | "
                         + " | ".join(cell(per_input.get((shape, dtype, provider, m))) for m in metrics) + " |")
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot(rows: list[Row], path: Path, title: str, mode: str) -> None:
    """Time per shape (log scale) for each provider and dtype in `mode`, and a memory panel beside it:
    peak extra memory where measured (CUDA), else the bytes saved for backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r.metric == "time" and r.mode == mode for r in rows):
        mode = next(r.mode for r in rows if r.metric == "time")
    memory = "peak extra memory" if any(r.metric == "peak extra memory" for r in rows) else "saved for backward"
    shapes = _ordered(r.shape for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    per_mode = memory == "peak extra memory"
    for ax, metric, scale, label in ((axes[0], "time", 1.0, f"{mode} time (ms)"),
                                     (axes[1], memory, 1 / MIB, f"{memory} (MiB{', ' + mode if per_mode else ''})")):
        picked = [r for r in rows if r.metric == metric and (r.mode == mode or metric == memory and not per_mode)]
        for provider, dtype in _ordered((r.provider, r.dtype) for r in picked):
            series = {r.shape: r for r in picked if (r.provider, r.dtype) == (provider, dtype)}
            ys = [series[s].median * scale if _measured(series.get(s)) else math.nan for s in shapes]
            line, = ax.plot(range(len(shapes)), ys, marker="o", label=f"{provider} {dtype}")
            for x, s in enumerate(shapes):
                if s in series and series[s].unit == "OOM":
                    ax.annotate("OOM", (x, 0.97), xycoords=ax.get_xaxis_transform(), ha="center", va="top",
                                color=line.get_color(), fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)
