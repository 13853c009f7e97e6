"""PNG of a run's curves (loss, learning rate, kNN accuracy), for a person to glance at."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fastssl.loaders import atomic  # noqa: E402


def plot_curves(records: list[dict], out: Path) -> None:
    steps = [r for r in records if "loss" in r]
    knn = [r for r in records if "knn_top1" in r]
    waits = [r for r in steps if r.get("data_wait_share") is not None]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot([r["step"] for r in knn], [100 * r["knn_top1"] for r in knn], marker="o")
    axes[2].set(title="kNN top-1 on held-out split (%)", xlabel="step")
    axes[3].plot([r["step"] for r in waits], [100 * r["data_wait_share"] for r in waits])
    axes[3].set(title="waiting for data (% of step time)", xlabel="step", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, out)
    plt.close(fig)
