"""What every benchmark shares: timing summaries, the result row, and its CSV/Markdown/PNG outputs.

Rows carry the device, versions, git commit and date, so a committed number can always be traced
to what produced it (docs/architecture.md, Benchmarks).
"""
from __future__ import annotations

import datetime
import platform
import textwrap
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from fastssl import envinfo
from fastssl.loaders import atomic


@dataclass
class Row:
    benchmark: str
    provider: str
    shape: str
    dtype: str
    mode: str
    metric: str
    median: float
    p20: float
    p80: float
    unit: str
    device: str
    torch: str
    triton: str
    cuda: str
    commit: str
    date: str


def summarize(samples: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80) of repeated measurements."""
    values = np.asarray(samples, dtype=np.float64)
    return float(np.median(values)), float(np.percentile(values, 20)), float(np.percentile(values, 80))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads"


def device_slug(device: str) -> str:
    """The file-name form of a Row's device: "cpu" for any CPU, else the GPU name in snake case."""
    return "cpu" if device.startswith("CPU") else device.lower().replace(" ", "_")


def context(device: torch.device) -> dict[str, str]:
    """The Row fields that describe where and when it was measured."""
    info = envinfo.collect()
    return {"device": device_name(device), "torch": info["torch"], "triton": info["triton"],
            "cuda": info["cuda"], "commit": info["git_commit"],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def write_csv(rows: list[Row], path: Path) -> None:
    atomic.write_csv(path, [fl.name for fl in fields(Row)], (asdict(r) for r in rows))


def write_markdown(rows: list[Row], path: Path, title: str, baseline: str) -> None:
    """A table with each provider's median, spread and ratio to the baseline of the same shape."""
    base = {r.shape: r.median for r in rows if r.provider == baseline}
    first = rows[0]
    lines = [f"# {title}", "",
             f"{first.device}; torch {first.torch}, triton {first.triton}, CUDA {first.cuda}; "
             f"commit {first.commit}; {first.date}", "",
             f"| provider | shape | {first.metric} median | p20 | p80 | vs {baseline} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.median / base[r.shape]:.2f}x" if r.shape in base else "—"   # baseline not run
        lines.append(f"| {r.provider} | {r.shape} | {r.median:,.1f} {r.unit} | {r.p20:,.1f} | {r.p80:,.1f} | "
                     f"{ratio} |")
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot_bars(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(rows)), 3.2))
    labels = ["\n".join(textwrap.fill(text, 26) for text in (r.provider, r.shape)) for r in rows]
    medians = np.array([r.median for r in rows])
    spread = np.array([[r.median - r.p20 for r in rows], [r.p80 - r.median for r in rows]])
    ax.bar(labels, medians, yerr=spread, capsize=6, color="#4c72b0")
    ax.set(title=title, ylabel=rows[0].unit)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)
