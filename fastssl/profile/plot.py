"""profile.png: one stacked bar per backend, one colour per stage, in ms per step."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fastssl.loaders import atomic  # noqa: E402

from .report import BackendProfile  # noqa: E402


def plot_stages(profiles: list[BackendProfile], out: Path, title: str) -> None:
    """Each stage's mean ms per step (its share of the timed wall time), stacked in step order."""
    names = list(dict.fromkeys(s.name for p in profiles for s in p.stages))
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(profiles) + 3), 4.2))
    bottoms = [0.0] * len(profiles)
    for i, name in enumerate(names):
        heights = [p.share_of(name) * p.wall_ms_per_step for p in profiles]
        ax.bar([p.backend for p in profiles], heights, bottom=bottoms, color=colours(i), label=name)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, p in enumerate(profiles):
        ax.annotate(f"{p.images_per_s:,.0f} img/s", (x, bottoms[x]), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="ms per step (mean)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, out)
    plt.close(fig)
