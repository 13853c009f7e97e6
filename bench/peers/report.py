"""What `fastssl bench peers` writes: STEM.csv (one row per run), STEM.md (per trainer, method and width
over the seeds, with the device, versions, commit, date and every substitution) and STEM.png (images/s
and kNN top-1 side by side)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fastssl.loaders import atomic


def _fmt(value, spec: str, none: str = "—") -> str:
    return none if value is None else format(value, spec)


def write_csv(rows, context: dict, path: Path) -> None:
    names = [f.name for f in dataclasses.fields(rows[0]) if f.name != "rates"] + list(context)
    records = []
    for row in rows:
        record = {k: v for k, v in dataclasses.asdict(row).items() if k != "rates"}
        record["substitutions"] = "; ".join(record["substitutions"])
        records.append({**record, **context})
    atomic.write_csv(path, names, records)


def _ratio_to_fastest_peer(summary, summaries) -> str:
    """images/s over the fastest non-fastssl trainer's, same method and width."""
    peers = [s.ips_median for s in summaries if not s.trainer.startswith("fastssl") and s.ips_median
             and s.method == summary.method and s.width == summary.width]
    return f"{summary.ips_median / max(peers):.2f}x" if peers and summary.ips_median else "—"


def write_markdown(summaries, rows, context: dict, recipe_line: str, command: str, path: Path) -> None:
    lines = ["# fastssl beside the alternatives: same data, network, recipe and epochs", "",
             f"{context['device']}; torch {context['torch']}; fastssl commit {context['commit']}; {context['date']}",
             f"Peers: {context['peers']}", "", f"Recipe: {recipe_line}", "", f"Command: `{command}`", "",
             "| trainer | method | width | images/s median | p20 | p80 | vs fastest peer | first step s | "
             "peak RSS MiB | kNN top-1 (mean ± sd, seeds) | linear top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if s.status != "ok":
            continue
        knn = f"{s.knn_mean:.4f}" + (f" ± {s.knn_sd:.4f}" if s.knn_sd is not None else "") + f" ({s.seeds})"
        lines.append(f"| {s.trainer} {s.version} | {s.method} | {s.width:g} | {_fmt(s.ips_median, ',.1f')} | "
                     f"{_fmt(s.ips_p20, ',.1f')} | {_fmt(s.ips_p80, ',.1f')} | {_ratio_to_fastest_peer(s, summaries)} | "
                     f"{_fmt(s.first_step_s, '.1f')} | {_fmt(s.peak_rss_mib, ',.0f')} | {knn} | "
                     f"{_fmt(s.linear_mean, '.4f')} |")
    missing = [s for s in summaries if s.status != "ok"]
    if missing:
        lines += ["", "Not run:", ""] + [f"- {s.trainer} {s.method} (width {s.width:g}): {s.status}: {s.reason}"
                                         for s in missing]
    notes = sorted({(row.trainer, note) for row in rows for note in row.substitutions})
    if notes:
        lines += ["", "What each trainer could not express, and what it did instead:", ""]
        lines += [f"- {trainer}: {note}" for trainer, note in notes]
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot(summaries, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s for s in summaries if s.status == "ok"]
    groups = sorted({(s.method, s.width) for s in done})
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 6.4), squeeze=False)
    for col, (method, width) in enumerate(groups):
        members = [s for s in done if (s.method, s.width) == (method, width)]
        labels = [s.trainer.replace(":", "\n") for s in members]
        colours = ["#4c72b0" if s.trainer.startswith("fastssl") else "#dd8452" for s in members]
        ips = np.array([s.ips_median or 0 for s in members])
        spread = np.array([[(s.ips_median or 0) - (s.ips_p20 or 0) for s in members],
                           [(s.ips_p80 or 0) - (s.ips_median or 0) for s in members]])
        axes[0, col].bar(labels, ips, yerr=spread, capsize=4, color=colours)
        axes[0, col].set(title=f"{method}, width {width:g}", ylabel="training images/s")
        knn = np.array([s.knn_mean or 0 for s in members])
        axes[1, col].bar(labels, knn, yerr=[s.knn_sd or 0 for s in members], capsize=4, color=colours)
        axes[1, col].set(ylabel="kNN top-1 (common evaluator)")
        for ax in axes[:, col]:
            ax.grid(axis="y", alpha=0.3)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)
