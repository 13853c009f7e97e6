"""`python -m fastssl.bench.rank_head_cost`: the head's cost per rank under data parallelism, before and
after each rank computes only its own rows' loss (Method.rank_loss, engine/distributed.py).

W gloo processes on the CPU (torch.multiprocessing, as torchrun would start them), one thread each.
Every rank holds the same gathered task z (V*B rows of the global batch; the gather itself is timed
apart, as `gather`) and times, per repetition, the head's forward + backward on it two ways:
`before`, the whole global task on every rank (the method's `forward`, what every rank computed until
this change), and `after`, this rank's share (`rank_loss`, backpropagated x W as the trainer does). The
two alternate within each repetition and every repetition starts at a barrier, so the ranks contend
for the cores as in training and drift hits both alike. Each rank's times are pooled into one median
(p20, p80) per (head, W, B).

On this 2-core machine 4 processes oversubscribe the CPU, so absolute times are not claims: the point
is the ratio before / after, which is what each rank saves (W at most, where the head's per-row work
dominates its shared work: the normalisation, prototypes, ridge or SVM solve every rank repeats).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import torch

from .harness import Row, context, device_slug, summarize, write_csv

BEFORE, AFTER, GATHER = "before (whole task)", "after (own rows)", "gather (fwd+bwd)"
HEADS = ("contrastive", "protonet", "r2d2", "svm tasks=1", "svm tasks=W")
BATCHES = (256, 1024, 4096)
SVM_MAX_BATCH = 1024         # the unrolled QP on 1 thread: larger batches take seconds per repetition
WORLDS = (2, 4)
DIM, N_SUPP, N_QUERY = 128, 1, 1
SVM_ITERS = 10
TEMPERATURE = 0.2


def make_head(name: str, world: int):
    from fastssl.methods.contrastive import ContrastiveHead
    from fastssl.methods.protonet import ProtoNetHead
    from fastssl.methods.r2d2 import R2D2Head
    from fastssl.methods.svm import SVMHead

    if name == "contrastive":
        return ContrastiveHead(TEMPERATURE, impl="reference")
    if name == "protonet":
        return ProtoNetHead(TEMPERATURE, impl="reference")
    if name == "r2d2":
        return R2D2Head(TEMPERATURE, 1.0, impl="reference")
    if name.startswith("svm"):
        return SVMHead(TEMPERATURE, 0.1, SVM_ITERS, 1 if name == "svm tasks=1" else world)
    raise ValueError(f"rank_head_cost: unknown head {name!r}: one of {', '.join(HEADS)}")


def cases(heads: list[str], batches: list[int]) -> list[tuple[str, int]]:
    """(head, global batch) pairs; the svm heads only up to SVM_MAX_BATCH."""
    return [(h, b) for h in heads for b in batches if not h.startswith("svm") or b <= SVM_MAX_BATCH]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn, barrier) -> float:
    barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def join_group(rank: int, world: int, port: int) -> None:
    """This worker as rank `rank` of a gloo group on this machine, on one thread (as one rank per core)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def run_ranks(worker, world: int, *args) -> dict:
    """worker(rank, world, port, *args, out) in `world` processes, each saving {key: [samples]} to
    out/rank<r>.pt; the samples of every rank pooled per key."""
    import torch.multiprocessing as mp

    pooled: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        mp.spawn(worker, args=(world, _free_port(), *args, scratch), nprocs=world)
        for rank in range(world):
            for key, values in torch.load(Path(scratch) / f"rank{rank}.pt").items():
                pooled.setdefault(key, []).extend(values)
    return pooled


def _worker(rank: int, world: int, port: int, todo: list[tuple[str, int]], reps: int, warmup: int,
            out: str) -> None:
    import torch.distributed as dist

    from fastssl.engine.distributed import Dist
    from fastssl.task.layout import RankRows, TaskLayout

    join_group(rank, world, port)
    ddp, rows, layout = Dist(rank, world, rank), RankRows(rank, world), TaskLayout(N_SUPP, N_QUERY)
    views = N_SUPP + N_QUERY
    samples: dict[tuple[str, str, int], list[float]] = {}
    for head_name, batch in todo:
        head = make_head(head_name, world)
        # every rank holds the same gathered task, as after the gather
        z = torch.randn(views * batch, DIM, generator=torch.Generator().manual_seed(batch)).requires_grad_()
        local = torch.randn(views * batch // world, DIM).requires_grad_()

        def before():
            head(z, layout).backward()

        def after():
            (head.rank_loss(z, layout, None, rows) * world).backward()

        def gather():
            ddp.gather_rows(local, views).square().sum().backward()

        runs = [(BEFORE, before), (AFTER, after)] + ([(GATHER, gather)] if head_name == "contrastive" else [])
        for rep in range(warmup + reps):
            for provider, fn in runs:
                seconds = _timed(fn, dist.barrier)
                z.grad = local.grad = None
                if rep >= warmup:
                    samples.setdefault((head_name, provider, batch), []).append(seconds)
    torch.save(samples, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def process_context() -> dict[str, str]:
    """Row fields for W one-thread worker processes (each sets its thread count itself, not the caller's)."""
    where = context(torch.device("cpu"))
    where["device"] = f"CPU {platform.machine()} x1 threads per process (W processes on {os.cpu_count()} cores)"
    return where


def measure(worlds: list[int], heads: list[str], batches: list[int], reps: int, warmup: int,
            progress=print) -> list[Row]:
    """Rows of per-rank forward+backward time (ms), every rank's repetitions pooled."""
    where = process_context()
    todo = cases(heads, batches)
    rows = []
    for world in worlds:
        tick = time.perf_counter()
        pooled = run_ranks(_worker, world, todo, reps, warmup)
        progress(f"W={world}: {len(todo)} cases in {time.perf_counter() - tick:.0f} s")
        for (head, provider, batch), values in pooled.items():
            shape = f"W={world} B={batch}" if provider == GATHER else f"{head} W={world} B={batch}"
            rows.append(Row("rank_head_cost", provider, shape, "fp32", "forward+backward", "time per rank",
                            *(1e3 * v for v in summarize(values)), unit="ms", **where))
    return rows


def ratios(rows: list[Row]) -> list[tuple[str, int, int, float, float, float]]:
    """(head, W, B, before ms, after ms, before / after) per case."""
    at = {(r.provider, r.shape): r.median for r in rows}
    out = []
    for r in rows:
        if r.provider != BEFORE:
            continue
        head, w, b = r.shape.rsplit(" ", 2)
        after = at[(AFTER, r.shape)]
        out.append((head, int(w[2:]), int(b[2:]), r.median, after, r.median / after))
    return out


def write_markdown(rows: list[Row], path: Path, reps: int, warmup: int) -> None:
    from fastssl.loaders import atomic

    first = rows[0]
    lines = ["# Head cost per rank: whole task on every rank (before) vs own rows (after)", "",
             f"{first.device}; torch {first.torch}; commit {first.commit}; {first.date}", "",
             "| head | W | global B | before ms (p20-p80) | after ms (p20-p80) | before / after |",
             "|---|---|---|---|---|---|"]
    by = {(r.provider, r.shape): r for r in rows}
    for head, w, b, _, _, ratio in ratios(rows):
        shape = f"{head} W={w} B={b}"
        bef, aft = by[(BEFORE, shape)], by[(AFTER, shape)]
        lines.append(f"| {head} | {w} | {b} | {bef.median:,.1f} ({bef.p20:,.1f}-{bef.p80:,.1f}) | "
                     f"{aft.median:,.1f} ({aft.p20:,.1f}-{aft.p80:,.1f}) | {ratio:.2f}x |")
    gathers = [r for r in rows if r.provider == GATHER]
    if gathers:
        lines += ["", "The gather for context (all_gather with gradient of the V*B/W local rows and its backward, "
                      "the same before and after):", "", "| shape | ms (p20-p80) |", "|---|---|"]
        lines += [f"| {r.shape} | {r.median:,.1f} ({r.p20:,.1f}-{r.p80:,.1f}) |" for r in gathers]
    lines += ["", f"Setup: V = {N_SUPP + N_QUERY} views (n_supp {N_SUPP}, n_query {N_QUERY}), D = {DIM}, fp32, "
              f"the torch reference kernels (CPU); svm iters = {SVM_ITERS}, C = 0.1; tau = {TEMPERATURE}. "
              f"Per repetition, after a barrier, each rank times before and after in turn on the same gathered "
              f"rows; {warmup} warm-up and {reps} timed repetitions, every rank's pooled (W x {reps} samples). "
              "One thread per process: with W = 4 the 4 processes share 2 cores, so absolute times are "
              "inflated and noisy; read the ratios. Ideal ratio W where a head's per-row work dominates; "
              "the shared work (unit rows of every gathered row, prototypes, the ridge solve, the SVM "
              "solve of a task that spans ranks) is repeated by every rank and caps it."]
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastssl.loaders import atomic

    table = ratios(rows)
    heads = list(dict.fromkeys(t[0] for t in table))
    fig, axes = plt.subplots(1, len(heads), figsize=(3.0 * len(heads), 3.2), sharey=True, squeeze=False)
    for ax, head in zip(axes[0], heads):
        for world in sorted({t[1] for t in table}):
            points = sorted((b, ratio) for h, w, b, _, _, ratio in table if h == head and w == world)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"W={world}")
            ax.axhline(world, ls="--", lw=0.8, color="grey")
        ax.set(title=head, xlabel="global batch B", xscale="log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        batches = sorted({t[2] for t in table if t[0] == head})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("per-rank head time, before / after")
    axes[0][0].legend()
    fig.suptitle("Head forward+backward per rank: speedup of own rows (dashed: W)", fontsize=10)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)


def write_all(rows: list[Row], out_dir: Path, reps: int, warmup: int) -> list[Path]:
    """rank_head_cost_<device>.{csv,md,png}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"rank_head_cost_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    write_markdown(rows, paths[1], reps, warmup)
    plot(rows, paths[2])
    return paths


def read_csv(path: Path) -> list[Row]:
    """The rows of a CSV this benchmark wrote (to redraw its Markdown and plot: --from-csv)."""
    import csv
    from dataclasses import fields

    numeric = {f.name for f in fields(Row) if f.type in ("float", float)}
    with open(path, newline="") as f:
        return [Row(**{k: float(v) if k in numeric else v for k, v in r.items()}) for r in csv.DictReader(f)]


def _listed(text: str, known=None, kind=str) -> list:
    values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    if known is not None and any(v not in known for v in values):
        raise SystemExit(f"rank_head_cost: {text!r}: choose from {', '.join(map(str, known))}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastssl.bench.rank_head_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default=",".join(map(str, WORLDS)), help="process counts, e.g. 2,4")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated: {', '.join(HEADS)}")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)),
                        help=f"global batch sizes (svm: those up to {SVM_MAX_BATCH})")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--from-csv", help="redraw the Markdown and plot from this CSV (nothing is measured)")
    args = parser.parse_args(argv)
    worlds = _listed(args.worlds, kind=int)
    batches = _listed(args.batches, kind=int)
    if any(w < 2 for w in worlds) or any(b % (2 * w) for b in batches for w in worlds):
        raise SystemExit("rank_head_cost: worlds >= 2, and every batch a multiple of 2 x every world")
    if args.from_csv:
        rows = read_csv(Path(args.from_csv))
    else:
        rows = measure(worlds, _listed(args.heads, HEADS), batches, args.reps, args.warmup)
    for head, w, b, before, after, ratio in ratios(rows):
        print(f"{head:>12} W={w} B={b:>5}: before {before:8.1f} ms  after {after:8.1f} ms  {ratio:5.2f}x")
    for path in write_all(rows, Path(args.out), args.reps, args.warmup):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
