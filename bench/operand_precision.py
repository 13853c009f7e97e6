"""`fastssl bench precision`: what bf16 operands cost the contrastive loss, against float64.

Why: under bf16 training the heads normalise embeddings in fp32, so the fused similarity kernel runs
fp32 (IEEE) dot products: the slowest tensor-core path on a GPU. Feeding it bf16 operands (products
exact, sums in fp32, as the kernel and the tensor cores do) is the fast path; this measures its error
on the loss and on the gradient of the embeddings, next to fp32 operands, both against float64.

The arithmetic is the same on any device (bf16 rounding of the operands, fp32 accumulation), so the
CPU's numbers stand for the GPU's: the torch reference computes half inputs in fp32. Embeddings are
made like a trained SimCLR batch's, not like random vectors: each image's two views share most of
their direction (cosine ~0.8), and rows are unit-norm, as the heads make them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastssl.kernels.reference import sim_xent_reference
from fastssl.loaders import atomic

from .harness import Row, context, device_slug, write_csv

OPERANDS = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = {"small": [(256, 128)], "full": [(512, 128), (4096, 128), (8192, 128)]}
TEMPERATURES = (0.1, 0.2, 0.5)
VIEW_NOISE = 0.5          # second view = normalize(first + 0.5 * unit noise): cosine ~ 0.89
TOLERANCE = 1e-2          # bf16 operands: relative error 1e-3..1e-2 is the expected band (loss and grad)


def views(two_n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(2N, D) float64 unit rows, view-major: row i and row i + N are two views of image i."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.nn.functional.normalize(torch.randn(two_n // 2, d, generator=gen, dtype=torch.float64), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(two_n // 2, d, generator=gen, dtype=torch.float64), dim=1)
    second = torch.nn.functional.normalize(first + VIEW_NOISE * noise, dim=1)
    return torch.cat([first, second])


def loss_and_grad(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of unit rows z (any dtype; half computed in fp32) and its gradient, both in float64."""
    z = z.detach().requires_grad_()
    ids = torch.arange(z.shape[0] // 2).repeat(2)
    loss = sim_xent_reference(z, z, scale=1.0 / temperature, instance_ids=ids, self_mask=True)
    loss.backward()
    return loss.detach().double(), z.grad.double()


def rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def measure(shapes: list[tuple[int, int]], progress=print) -> list[Row]:
    where = context(torch.device("cpu"))
    rows = []
    for two_n, d in shapes:
        z = views(two_n, d)
        for temperature in TEMPERATURES:
            ref_loss, ref_grad = loss_and_grad(z, temperature)
            shape = f"2N={two_n} D={d} tau={temperature:g}"
            for name, dtype in OPERANDS.items():
                loss, grad = loss_and_grad(z.to(dtype), temperature)
                for metric, value in (("rel error loss", rel(loss, ref_loss)), ("rel error grad", rel(grad, ref_grad))):
                    rows.append(Row("operand_precision", name, shape, name, "forward+backward", metric,
                                    value, value, value, "rel", **where))
            progress(f"{shape}: " + ", ".join(f"{r.provider} {r.metric} {r.median:.1e}" for r in rows[-4:]))
    return rows


def verdict(rows: list[Row]) -> tuple[float, bool]:
    """The largest bf16 error over every shape and temperature, and whether it is within TOLERANCE."""
    worst = max(r.median for r in rows if r.provider == "bf16")
    return worst, worst <= TOLERANCE


def write_all(rows: list[Row], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"sim_xent_operands_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    worst, ok = verdict(rows)
    first = rows[0]
    lines = ["# Contrastive loss with bf16 vs fp32 operands, against float64", "",
             f"{first.device}; torch {first.torch}; commit {first.commit}; {first.date}", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Worst bf16 error: {worst:.1e} ({'within' if ok else 'OUTSIDE'} the bf16 tolerance {TOLERANCE:g}).", "",
             "| shape | operands | rel error loss | rel error grad |", "|---|---|---|---|"]
    by_key = {(r.shape, r.provider, r.metric): r.median for r in rows}
    for shape in dict.fromkeys(r.shape for r in rows):
        for name in OPERANDS:
            lines.append(f"| {shape} | {name} | {by_key[(shape, name, 'rel error loss')]:.1e} | "
                         f"{by_key[(shape, name, 'rel error grad')]:.1e} |")
    atomic.write_text(paths[1], "\n".join(lines) + "\n")
    _plot(rows, paths[2])
    return paths


def _plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, metric in zip(axes, ("rel error loss", "rel error grad")):
        for offset, name in ((-0.2, "fp32"), (0.2, "bf16")):
            values = [next(r.median for r in rows if r.shape == s and r.provider == name and r.metric == metric)
                      for s in shapes]
            ax.bar([i + offset for i in range(len(shapes))], values, width=0.4, label=f"{name} operands")
        ax.axhline(TOLERANCE, color="k", ls="--", lw=1, label="bf16 tolerance")
        ax.set(title=metric, yscale="log", xticks=range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=35, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("relative error vs float64")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)
