"""`python -m fastssl.bench.scaling_bench`: what data parallelism costs each rank as W grows, measured with W
gloo processes on this CPU (W = 1, 2, 4, 8): the inputs bench/scaling_model.py cannot take from a GPU here.

Per rank, each repetition after a barrier:
- gather: Dist.gather_rows of SimCLR-shaped rows (2 views x B/W x 128, fp32 and bf16) and its backward
  (on gloo an all-to-all, on NCCL a reduce-scatter: the same bytes), wall time; each size is first checked
  against the concatenation of every rank's rows, in the task's view-major order;
- all-reduce: Dist.average_grads of a prototype layer's gradient (K x 256, fp32), what splitting DINO by
  images would add, wall time;
- heads, CPU time of the rank's thread (torch reference kernels, one thread): contrastive `rank_loss` on
  its own rows (row_offset) of the 2 x 4,096-row task; DINO's loss (DINOHead, multi-crop 2 + 8 views,
  D = 256, K cut from 65,536 to 4,096 for this CPU) on the whole global batch, as every rank computes it
  now (splits_rows False), and on the rank's own images, as a split by images would.

Collectives are timed by the wall clock (they wait on each other), heads by the thread's CPU time, which
oversubscription does not inflate: at W = 8 the 8 processes share 2 cores, so a head's wall time is ~W/2 x
its work while its CPU time is the work (cache and memory-bandwidth contention still show). Absolute times
are this CPU's, not claims about a GPU: the ratios across W and the dependence on bytes are the point.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .harness import Row, device_slug, summarize, write_csv
from .rank_head_cost import join_group, make_head, process_context, read_csv, run_ranks

GATHER, ALL_REDUCE = "gather (fwd+bwd)", "all-reduce (prototypes' grad)"
CONTRASTIVE, DINO_WHOLE, DINO_OWN = "contrastive, own rows", "dino, whole batch (replicated)", "dino, own images"
HEADS = (CONTRASTIVE, DINO_WHOLE, DINO_OWN)
TIME, CPU_TIME, BYTES, ERROR = "time per rank", "CPU time per rank", "bytes", "max |gathered - concatenation|"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VIEWS, DIM = 2, 128                      # SimCLR's rows
DINO_GLOBAL, DINO_LOCAL, DINO_DIM = 2, 8, 256


@dataclass(frozen=True)
class Plan:
    """What each world size measures."""
    gather_batches: tuple[int, ...] = (1024, 4096, 16384)
    prototypes: tuple[int, ...] = (4096, 65536)     # all-reduced K x DINO_DIM
    contrastive_batch: int = 4096
    dino_batch: int = 512
    dino_prototypes: int = 4096
    reps: int = 5
    warmup: int = 1

    def batches(self) -> list[int]:
        return [*self.gather_batches, self.contrastive_batch, self.dino_batch]


def local_rows(rank: int, rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Rank `rank`'s rows, the same whichever process draws them."""
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(rank)).to(dtype)


def concatenation(world: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The gathered task built by hand: view v of rank w's images at rows v * B + w * B/W."""
    parts = [local_rows(w, VIEWS * batch // world, DIM, dtype).view(VIEWS, batch // world, DIM) for w in range(world)]
    return torch.cat(parts, dim=1).reshape(VIEWS * batch, DIM)


def _clock(fn, barrier) -> tuple[float, float]:
    """(wall, this thread's CPU) seconds of fn, started together after a barrier."""
    barrier()
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


@dataclass
class Case:
    """One measurement: `run`, timed repeatedly with `reset` between repetitions; or, without `run`, a check's
    `value`, taken once."""
    key: tuple
    run: Callable[[], object] | None = None
    reset: Callable[[], object] | None = None
    cpu: bool = False                    # time by this thread's CPU clock, not the wall clock
    value: float = 0.0


def _cases(rank: int, world: int, plan: Plan):
    """Every measurement at this world size, each gather size preceded by its check."""
    from fastssl.engine.distributed import Dist
    from fastssl.methods.base import MethodContext
    from fastssl.methods.dino import DINOHead
    from fastssl.task.layout import RankRows, TaskLayout

    ddp, rows = Dist(rank, world, rank), RankRows(rank, world)
    if world > 1:
        for name, dtype in DTYPES.items():
            for batch in plan.gather_batches:
                z = local_rows(rank, VIEWS * batch // world, DIM, dtype).requires_grad_()
                error = (ddp.gather_rows(z, VIEWS).detach() - concatenation(world, batch, dtype)).abs().max()
                yield Case((GATHER, name, batch, ERROR), value=float(error))

                def gather(z=z):
                    ddp.gather_rows(z, VIEWS).float().square().sum().backward()
                yield Case((GATHER, name, batch, TIME), gather, lambda z=z: setattr(z, "grad", None))
        for k in plan.prototypes:
            weight = torch.nn.Parameter(torch.zeros(k, DINO_DIM))
            weight.grad = torch.randn(k, DINO_DIM)
            yield Case((ALL_REDUCE, "fp32", k, TIME), lambda w=weight: ddp.average_grads([w]))

    contrastive, task = make_head("contrastive", world), TaskLayout(1, 1)
    z = torch.randn(VIEWS * plan.contrastive_batch, DIM).requires_grad_()

    def own_rows():
        (contrastive.rank_loss(z, task, None, rows) * world).backward()
    yield Case((CONTRASTIVE, "fp32", plan.contrastive_batch, CPU_TIME), own_rows, lambda: setattr(z, "grad", None),
               cpu=True)

    dino = DINOHead(DINO_DIM, DINOHead.Settings(prototypes=plan.dino_prototypes),
                    MethodContext(embed_dim=DINO_DIM, impl="reference"))
    crops = TaskLayout(1, DINO_GLOBAL + DINO_LOCAL - 1, global_views=DINO_GLOBAL)
    b, views = plan.dino_batch, DINO_GLOBAL + DINO_LOCAL
    student, teacher = torch.randn(views * b, DINO_DIM).requires_grad_(), torch.randn(DINO_GLOBAL * b, DINO_DIM)
    mine = torch.randn(views * b // world, DINO_DIM).requires_grad_()

    def clear():
        student.grad = mine.grad = None
        dino.zero_grad(set_to_none=True)

    def whole():
        (dino.rank_loss(student, crops, teacher, rows) * world).backward()

    def own_images():
        dino(mine, crops, teacher[:DINO_GLOBAL * b // world]).backward()
    yield Case((DINO_WHOLE, "fp32", b, CPU_TIME), whole, clear, cpu=True)
    yield Case((DINO_OWN, "fp32", b, CPU_TIME), own_images, clear, cpu=True)


def _worker(rank: int, world: int, port: int, plan: Plan, out: str) -> None:
    import torch.distributed as dist

    join_group(rank, world, port)
    samples: dict[tuple, list[float]] = {}
    for case in _cases(rank, world, plan):
        if case.run is None:
            samples[case.key] = [case.value]
            continue
        for rep in range(plan.warmup + plan.reps):
            wall, cpu = _clock(case.run, dist.barrier)
            if case.reset is not None:
                case.reset()
            if rep >= plan.warmup:
                samples.setdefault(case.key, []).append(cpu if case.cpu else wall)
    torch.save(samples, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def gathered_bytes(batch: int, dtype: str) -> int:
    """The whole gathered tensor (nccl-tests' S): every view's rows of the global batch."""
    return VIEWS * batch * DIM * DTYPES[dtype].itemsize


def measure(worlds: list[int], plan: Plan, progress=print) -> list[Row]:
    """Rows of every measurement, every rank's repetitions pooled, and the gathers' byte counts and checks."""
    where = process_context()
    rows = []
    for world in worlds:
        tick = time.perf_counter()
        pooled = run_ranks(_worker, world, plan)
        progress(f"W={world}: {len(pooled)} measurements in {time.perf_counter() - tick:.0f} s")
        for (case, dtype, size, metric), values in pooled.items():
            shape = f"W={world} {'K' if case == ALL_REDUCE else 'B'}={size}"
            if metric == ERROR:
                rows.append(Row("scaling", case, shape, dtype, "forward", metric, max(values), min(values),
                                max(values), unit="abs", **where))
                continue
            rows.append(Row("scaling", case, shape, dtype, "forward+backward", metric,
                            *(1e3 * v for v in summarize(values)), unit="ms", **where))
            if case in (GATHER, ALL_REDUCE):
                n = gathered_bytes(size, dtype) if case == GATHER else 4 * size * DINO_DIM
                rows.append(Row("scaling", case, shape, dtype, "forward", BYTES, n, n, n, unit="B", **where))
    return rows


def _parts(row: Row) -> tuple[int, int]:
    w, size = row.shape.split()
    return int(w[2:]), int(size.split("=")[1])


def _pick(rows: list[Row], case: str, metric: str) -> list[Row]:
    return sorted((r for r in rows if r.provider == case and r.metric == metric), key=lambda r: (r.dtype, _parts(r)))


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares t = a + S / bw over (bytes, ms) points: (a in ms, bw in MB/s); the fixed cost and the rate."""
    s, t = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(s, t, 1)
    return float(intercept), float(1e-3 / slope) if slope > 0 else float("inf")


def write_markdown(rows: list[Row], path: Path, plan: Plan) -> None:
    from fastssl.loaders import atomic

    first = rows[0]
    nbytes = {(r.provider, r.shape, r.dtype): r.median for r in rows if r.metric == BYTES}
    error = {(r.shape, r.dtype): r.median for r in rows if r.metric == ERROR}
    lines = ["# Data-parallel cost per rank against W, gloo on this CPU", "",
             f"{first.device}; torch {first.torch}; commit {first.commit}; {first.date}", "",
             "## Gather of SimCLR rows (2 views x B/W x 128), forward + backward, wall time", "",
             "| W | B | dtype | gathered MiB | ms (p20-p80) | bf16 / fp32 | check |", "|---|---|---|---|---|---|---|"]
    gathers = _pick(rows, GATHER, TIME)
    at = {(r.shape, r.dtype): r.median for r in gathers}
    for r in sorted(gathers, key=lambda r: (_parts(r), r.dtype)):
        w, b = _parts(r)
        ratio = f"{at[(r.shape, 'bf16')] / at[(r.shape, 'fp32')]:.2f}" if r.dtype == "bf16" else ""
        check = "exact" if error.get((r.shape, r.dtype)) == 0 else f"{error.get((r.shape, r.dtype))}"
        lines.append(f"| {w} | {b:,} | {r.dtype} | {nbytes[(GATHER, r.shape, r.dtype)] / 2 ** 20:,.1f} | "
                     f"{r.median:,.1f} ({r.p20:,.1f}-{r.p80:,.1f}) | {ratio} | {check} |")
    lines += ["", "Fitted t = a + S / bw over the sizes of each W (S the whole gathered tensor):", "",
              "| W | dtype | a, ms | bw, MB/s of S |", "|---|---|---|---|"]
    for (w, dtype) in sorted({(_parts(r)[0], r.dtype) for r in gathers}):
        pts = [(nbytes[(GATHER, r.shape, r.dtype)], r.median) for r in gathers if _parts(r)[0] == w and r.dtype == dtype]
        if len(pts) > 1:
            a, bw = fit(pts)
            lines.append(f"| {w} | {dtype} | {a:,.1f} | {bw:,.0f} |" if np.isfinite(bw) else
                         f"| {w} | {dtype} | — | — (time did not grow with bytes) |")
    lines += ["", "## All-reduce of a prototype layer's gradient (K x 256 fp32, Dist.average_grads), wall time", "",
              "| W | K | MiB | ms (p20-p80) |", "|---|---|---|---|"]
    for r in sorted(_pick(rows, ALL_REDUCE, TIME), key=_parts):
        w, k = _parts(r)
        lines.append(f"| {w} | {k:,} | {nbytes[(ALL_REDUCE, r.shape, r.dtype)] / 2 ** 20:,.1f} | "
                     f"{r.median:,.1f} ({r.p20:,.1f}-{r.p80:,.1f}) |")
    lines += ["", "## Heads, forward + backward, CPU time of the rank's thread", "",
              "| head | global B | W | ms per rank (p20-p80) | W=1 / this | ideal |", "|---|---|---|---|---|---|"]
    for head in HEADS:
        mine = sorted(_pick(rows, head, CPU_TIME), key=_parts)
        one = next((r.median for r in mine if _parts(r)[0] == 1), None)
        for r in mine:
            w, b = _parts(r)
            ideal = "1 (replicated)" if head == DINO_WHOLE else f"{w}"
            lines.append(f"| {head} | {b:,} | {w} | {r.median:,.1f} ({r.p20:,.1f}-{r.p80:,.1f}) | "
                         f"{f'{one / r.median:.2f}' if one else '—'} | {ideal} |")
    lines += ["", f"Setup: {plan.warmup} warm-up and {plan.reps} timed repetitions per measurement and rank, every "
              "rank's samples pooled; one thread per process, W processes on this machine's cores (W = 8 "
              "oversubscribes 2 cores 4x: wall times of collectives include the wait for a core). Heads: torch "
              f"reference kernels; contrastive tau = 0.2, D = {DIM}, 2 views; DINO {DINO_GLOBAL} + {DINO_LOCAL} "
              f"views, D = {DINO_DIM}, K = {plan.dino_prototypes:,} (65,536 in the recipes), student 0.1, teacher "
              "0.04. Collectives: gloo over loopback, which says how cost grows with bytes and W, not what NCCL "
              "on NVLink or InfiniBand takes (bench/scaling_model.py)."]
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastssl.loaders import atomic

    nbytes = {(r.provider, r.shape, r.dtype): r.median for r in rows if r.metric == BYTES}
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.6))
    gathers = _pick(rows, GATHER, TIME)
    for w in sorted({_parts(r)[0] for r in gathers}):
        for dtype, marker in (("fp32", "o"), ("bf16", "s")):
            pts = sorted((nbytes[(GATHER, r.shape, r.dtype)] / 2 ** 20, r.median) for r in gathers
                         if _parts(r)[0] == w and r.dtype == dtype)
            if pts:
                left.plot(*zip(*pts), marker=marker, label=f"W={w} {dtype}")
    left.set(title="gather fwd+bwd (wall)", xlabel="gathered MiB", ylabel="ms", xscale="log", yscale="log")
    reduces = sorted(_pick(rows, ALL_REDUCE, TIME), key=_parts)
    for k in sorted({_parts(r)[1] for r in reduces}):
        pts = [(_parts(r)[0], r.median) for r in reduces if _parts(r)[1] == k]
        middle.plot(*zip(*pts), marker="o", label=f"K={k:,} ({4 * k * DINO_DIM / 2 ** 20:,.0f} MiB)")
    middle.set(title="all-reduce K x 256 fp32 (wall)", xlabel="W", ylabel="ms", xscale="log", yscale="log")
    for head in HEADS:
        pts = sorted((_parts(r)[0], r.median) for r in _pick(rows, head, CPU_TIME))
        if pts:
            right.plot(*zip(*pts), marker="o", label=head)
            if head != DINO_WHOLE:
                right.plot([p[0] for p in pts], [pts[0][1] / p[0] * pts[0][0] for p in pts], ls=":", color="grey")
    right.set(title="head per rank (CPU time; dotted: 1/W)", xlabel="W", ylabel="ms", xscale="log", yscale="log")
    for ax, shown in ((middle, reduces), (right, [r for r in rows if r.metric == CPU_TIME])):
        worlds = sorted({_parts(r)[0] for r in shown})
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(worlds, [str(w) for w in worlds])
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)


def write_all(rows: list[Row], out_dir: Path, plan: Plan) -> list[Path]:
    """scaling_<device>.{csv,md,png}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"scaling_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    write_markdown(rows, paths[1], plan)
    plot(rows, paths[2])
    return paths


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    plan = Plan()
    parser = argparse.ArgumentParser(prog="python -m fastssl.bench.scaling_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,2,4,8", help="process counts")
    parser.add_argument("--gather-batches", default=",".join(map(str, plan.gather_batches)),
                        help="global batches whose 2 x B x 128 rows are gathered")
    parser.add_argument("--prototypes", default=",".join(map(str, plan.prototypes)),
                        help="K of the K x 256 gradients all-reduced")
    parser.add_argument("--contrastive-batch", type=int, default=plan.contrastive_batch)
    parser.add_argument("--dino-batch", type=int, default=plan.dino_batch)
    parser.add_argument("--dino-prototypes", type=int, default=plan.dino_prototypes)
    parser.add_argument("--reps", type=int, default=plan.reps)
    parser.add_argument("--warmup", type=int, default=plan.warmup)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--from-csv", help="redraw the Markdown and plot from this CSV (nothing is measured)")
    args = parser.parse_args(argv)
    plan = Plan(_ints(args.gather_batches), _ints(args.prototypes), args.contrastive_batch, args.dino_batch,
                args.dino_prototypes, args.reps, args.warmup)
    worlds = _ints(args.worlds)
    if any(w < 1 for w in worlds) or any(b % w for b in plan.batches() for w in worlds):
        raise SystemExit("scaling_bench: worlds >= 1, and every batch a multiple of every world")
    rows = read_csv(Path(args.from_csv)) if args.from_csv else measure(list(worlds), plan)
    for path in write_all(rows, Path(args.out), plan):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
