"""`python -m fastssl.bench.scaling_model`: data-parallel scaling on paper, W = 1 to 64 H100s, for the ImageNet
SimCLR and DINO recipes: bytes all-gathered per step, communication time, the head's FLOPs and time per
rank, their predicted share of a step, and the world size where the design must change.

On paper because this machine has no GPU and no network: bench/scaling_bench.py measures what gloo on
this CPU can show (how the gather grows with bytes and W, which heads shrink with W); the numbers here
come from NCCL's published bandwidths and its own latency model, the fused kernels' launch grids and an
assumed encoder throughput, each named with its source in ASSUMPTIONS (bench/NOTES.md, "Scaling to 64
GPUs"). None of them was measured here.

What a step costs under torchrun (engine/distributed.py, engine/trainer.py train_step), per rank:
- the encoder on B / W images, all their views;
- the gather of every view's rows with gradient (an all-gather forward, a reduce-scatter backward, the
  same bytes), plus, for DINO, the teacher's global-view rows without gradient;
- the head: contrastive on its own rows against all (sim_xent, row_offset: `splits_rows`); DINO's whole
  loss on every rank (`splits_rows = False`), so its prototypes get the same gradient everywhere and
  need no all-reduce;
- one all-reduce of the loss shares (a few scalars).
None of this overlaps the encoder: the gather and the head run between forward and backward. The changes
the model weighs (split kernels, DINO split by images) are described where `step` computes them.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

GPUS_PER_NODE = 8
WORLDS = (1, 2, 4, 8, 16, 32, 64)
LIMIT = 0.10                 # the design must change where communication + head exceed this share of a step
SMS = 132                    # H100 SXM
SM_FLOPS = 1.9e12            # executed bf16 FLOP/s per SM by the fused heads (ASSUMPTIONS)
SIM_TILE = (128, 64)         # kernels/sim_xent.py's GPU tiles: query rows x key columns
PROTO_TILE = (64, 64)        # kernels/proto_xent.py's: images x prototypes
FEATURE_CHUNK = 128          # both kernels walk bf16 features 128 at a time


@dataclass(frozen=True)
class Fabric:
    busbw: float             # NCCL bus bandwidth of a ring all-gather / reduce-scatter, bytes/s
    hop: dict[str, float]    # per ring step, seconds, per NCCL protocol


@dataclass(frozen=True)
class Protocol:
    name: str
    base: float              # seconds per collective
    share_one_node: float    # fraction of the bus bandwidth it reaches, one node / several
    share_nodes: float
    caps: tuple[float, ...]  # its bandwidth cap, bytes/s, at 1, 2 and 3+ nodes
    net_floor: float         # least time of an intra-node step once the ring crosses nodes (network overhead)


NVLINK = Fabric(360e9, {"Simple": 3.4e-6, "LL": 0.6e-6})
INFINIBAND = Fabric(47e9, {"Simple": 14.0e-6, "LL": 2.7e-6})
PROTOCOLS = (Protocol("Simple", 8.4e-6, 1.0, 1.0, (math.inf,) * 3, 3e-6),
             Protocol("LL", 6.6e-6, 1 / 3, 1 / 4, (87.7e9, 39.0e9, 20.4e9), 1e-6))


def nodes(world: int) -> int:
    return -(-world // GPUS_PER_NODE)


def protocol_seconds(nbytes: float, world: int, proto: Protocol) -> float:
    """One protocol's time in NCCL's ring model (src/graph/tuning.cc): base + (W - N) intra-node steps + (N - 1)
    network steps, plus (W - 1) / W * S at the bus bandwidth of the slowest link the ring crosses."""
    n = nodes(world)
    fabric = NVLINK if n == 1 else INFINIBAND
    intra = NVLINK.hop[proto.name] if n == 1 else max(NVLINK.hop[proto.name], proto.net_floor)
    latency = proto.base + (world - n) * intra + (n - 1) * INFINIBAND.hop[proto.name]
    bandwidth = min(fabric.busbw * (proto.share_one_node if n == 1 else proto.share_nodes), proto.caps[min(n, 3) - 1])
    return latency + (world - 1) / world * nbytes / bandwidth


def ring_seconds(nbytes: float, world: int) -> float:
    """An all-gather or reduce-scatter whose whole (gathered) tensor has `nbytes` (nccl-tests' S), in NCCL's
    faster protocol for that size; nothing on one process."""
    return 0.0 if world == 1 else min(protocol_seconds(nbytes, world, p) for p in PROTOCOLS)


def allreduce_seconds(nbytes: float, world: int) -> float:
    """A ring all-reduce: a reduce-scatter and an all-gather of the same tensor."""
    return 2 * ring_seconds(nbytes, world)


@dataclass(frozen=True)
class Launch:
    name: str
    ctas: int
    flops_per_cta: float


def launch_seconds(launches: list[Launch]) -> float:
    """Each launch runs ceil(CTAs / SMs) waves of one CTA's work at one SM's rate: a grid smaller than the GPU
    takes as long as one CTA, however few rows it has."""
    return sum(math.ceil(k.ctas / SMS) * k.flops_per_cta / SM_FLOPS for k in launches)


def fill(blocks: int) -> int:
    """How many slices a sweep must be split into for `blocks` CTAs to occupy every SM."""
    return max(1, SMS // blocks)


def sim_xent_launches(rows: int, cols: int, dim: int, col_splits: int = 1) -> list[Launch]:
    """kernels/sim_xent.py on `rows` query rows against `cols` key rows: the forward and the rows' gradient by
    blocks of query rows, each sweeping every column; the keys' gradient by blocks of columns; both gradients
    recompute the logits. `col_splits` > 1: the row sweeps split over the columns too, their log-sum-exps
    and partial gradients merged (not written: the similarity matrix sharded inside the GPU)."""
    bm, bn = SIM_TILE
    chunk = min(dim, FEATURE_CHUNK)
    chunks, blocks = math.ceil(dim / chunk), math.ceil(rows / bm)
    return [Launch("forward", blocks * col_splits, 2 * bm * cols * dim / col_splits),
            Launch("grad rows", blocks * chunks * col_splits, 2 * bm * cols * (dim + chunk) / col_splits),
            Launch("grad cols", math.ceil(cols / bn) * chunks, 2 * rows * bn * (dim + chunk))]


def proto_xent_launches(images: int, prototypes: int, dim: int, student: int, teacher: int,
                        k_splits: int = 1) -> list[Launch]:
    """kernels/proto_xent.py: the teacher's log-sum-exp, the forward (every view of an image block) and the
    rows' gradients (per view and feature chunk) each sweep all K prototypes in one CTA per image block; the
    prototypes' gradient runs per prototype block over every image. `k_splits` > 1: those sweeps split over K
    as well, their partial sums merged (not written: what filling the GPU would take)."""
    bb, bk = PROTO_TILE
    chunk = min(dim, FEATURE_CHUNK)
    chunks, blocks = math.ceil(dim / chunk), math.ceil(images / bb)
    logits, rows_grad = 2 * bb * prototypes * dim / k_splits, 2 * bb * prototypes * (dim + chunk) / k_splits
    return [Launch("teacher lse", blocks * teacher * k_splits, logits),
            Launch("forward", blocks * k_splits, (student + teacher) * logits),
            Launch("grad teacher rows", blocks * teacher * chunks * k_splits, rows_grad),
            Launch("grad student rows", blocks * student * chunks * k_splits, rows_grad),
            Launch("grad prototypes", math.ceil(prototypes / bk) * chunks,
                   (student + teacher) * 2 * images * bk * (dim + chunk))]


@dataclass(frozen=True)
class Encoder:
    name: str
    views_per_s: float       # 224 px views, forward + backward, per H100
    low_res: float           # a 96 px crop's cost relative to a 224 px view


RESNET50 = Encoder("ResNet-50", 4900.0, (96 / 224) ** 2)
VIT_S16 = Encoder("ViT-S/16", 4900.0 * 4.1 / 4.6, 37 / 197)


@dataclass(frozen=True)
class Recipe:
    name: str
    encoder: Encoder
    batch: int = 0           # global batch, fixed; 0: per_gpu images on each of W GPUs
    per_gpu: int = 0
    global_views: int = 2
    local_views: int = 0
    dim: int = 128
    prototypes: int = 0      # 0: contrastive over every view's rows; else DINO's K, with an EMA teacher

    def global_batch(self, world: int) -> int:
        return self.batch or self.per_gpu * world

    @property
    def views(self) -> int:
        return self.global_views + self.local_views


SIMCLR = Recipe("SimCLR, ImageNet, ResNet-50, B = 4,096", RESNET50, batch=4096)
SIMCLR_PER_GPU = Recipe("SimCLR, ResNet-50, 64 images per GPU (B = 4,096 at W = 64)", RESNET50, per_gpu=64)
DINO = Recipe("DINO, ImageNet, ViT-S/16, B = 1,024 (configs/recipes/dino_imagenet_vits16.yaml)", VIT_S16,
              batch=1024, local_views=8, dim=256, prototypes=65536)
DINO_PER_GPU = Recipe("DINO, ViT-S/16, 64 images per GPU (main_dino.py's batch_size_per_gpu)", VIT_S16,
                      per_gpu=64, local_views=8, dim=256, prototypes=65536)
RECIPES = (SIMCLR, SIMCLR_PER_GPU, DINO, DINO_PER_GPU)

# How the head is spread over the ranks: as fastssl does it now (the first of each), and the changes: the
# kernels' sweeps split to fill the GPU; DINO split by images.
ROWS, ROWS_SPLIT = "own rows", "own rows + split-column kernels"
REPLICATED, IMAGES, IMAGES_SPLIT_K = "replicated", "by images", "by images + split-K kernels"
DESIGNS = {"contrastive": (ROWS, ROWS_SPLIT), "dino": (REPLICATED, IMAGES, IMAGES_SPLIT_K)}


@dataclass(frozen=True)
class Step:
    recipe: Recipe
    design: str
    world: int
    row_bytes: int
    gathered: float          # bytes of whole tensors all-gathered or reduce-scattered per step
    reduced: float           # bytes all-reduced per step
    comm_s: float            # exposed: not overlapped with the encoder
    latency_s: float         # the part of comm_s that is fixed per collective
    head_flops: float        # executed per rank
    head_s: float
    encoder_s: float

    @property
    def step_s(self) -> float:
        return self.encoder_s + self.comm_s + self.head_s

    @property
    def share(self) -> float:
        """Communication + head, the cost of running data-parallel this way, over the step."""
        return (self.comm_s + self.head_s) / self.step_s


def encoder_seconds(recipe: Recipe, images: int) -> float:
    """Every view forward + backward; DINO's teacher adds a forward (a third of that) of each global view."""
    enc = recipe.encoder
    views = recipe.global_views + recipe.local_views * enc.low_res
    if recipe.prototypes:
        views += recipe.global_views / 3
    return images * views / enc.views_per_s


def step(recipe: Recipe, world: int, design: str | None = None, row_bytes: int = 2) -> Step:
    """One training step on W GPUs; `row_bytes` 2: the rows as the recipes gather them (autocast makes the
    projector's output bf16 or fp16), 4: as train.precision fp32 does.

    The changes weighed, none written: split kernels (sim_xent_launches, proto_xent_launches); DINO by
    images, where each rank's loss is its own images' (DINO's loss is per image), so no rows move and the
    centre's K teacher means and the prototypes' K x D gradient are all-reduced in fp32, the latter started
    when the head's backward ends and so overlapped with the encoder's backward (taken as half the
    encoder's time): only what outlasts it counts."""
    design = design or DESIGNS["dino" if recipe.prototypes else "contrastive"][0]
    batch = recipe.global_batch(world)
    images = batch // world
    encoder = encoder_seconds(recipe, images)
    rows = recipe.views * batch * recipe.dim * row_bytes
    collectives = [("all-reduce", 4.0)]                               # the loss shares
    exposed = 0.0                                                     # of collectives overlapping the encoder
    if design in (ROWS, ROWS_SPLIT):
        collectives += [("ring", rows)] * 2                          # all-gather + its reduce-scatter
        own = recipe.views * images
        splits = fill(math.ceil(own / SIM_TILE[0])) if design == ROWS_SPLIT else 1
        launches = sim_xent_launches(own, recipe.views * batch, recipe.dim, splits)
    elif design == REPLICATED:
        targets = recipe.global_views * batch * recipe.dim * row_bytes   # the teacher's rows, no gradient
        collectives += [("ring", rows)] * 2 + [("ring", targets)]
        launches = proto_xent_launches(batch, recipe.prototypes, recipe.dim, recipe.views, recipe.global_views)
    elif design in (IMAGES, IMAGES_SPLIT_K):
        collectives.append(("all-reduce", 4.0 * recipe.prototypes))
        grads = 4.0 * recipe.prototypes * recipe.dim
        exposed = max(0.0, allreduce_seconds(grads, world) - encoder / 2)
        splits = fill(math.ceil(images / PROTO_TILE[0])) if design == IMAGES_SPLIT_K else 1
        launches = proto_xent_launches(images, recipe.prototypes, recipe.dim, recipe.views, recipe.global_views,
                                       splits)
        collectives.append(("overlapped all-reduce", grads))
    else:
        raise ValueError(f"scaling_model: unknown design {design!r}")
    timed = {"ring": ring_seconds, "all-reduce": allreduce_seconds}
    comm = sum(timed[kind](n, world) for kind, n in collectives if kind in timed) + exposed
    latency = sum(timed[kind](0.0, world) for kind, _ in collectives if kind in timed)
    gathered = sum(n for kind, n in collectives if kind == "ring") if world > 1 else 0.0
    reduced = sum(n for kind, n in collectives if kind != "ring") if world > 1 else 0.0
    return Step(recipe, design, world, row_bytes, gathered, reduced, comm, min(latency, comm),
                sum(k.ctas * k.flops_per_cta for k in launches), launch_seconds(launches), encoder)


def sweep(recipe: Recipe) -> list[int]:
    """W = 1, 2, 4, ... up to 4,096, while every GPU holds at least one image."""
    worlds, w = [], 1
    while w <= 4096 and (recipe.per_gpu or recipe.batch % w == 0):
        worlds.append(w)
        w *= 2
    return worlds


def first_over(recipe: Recipe, design: str, limit: float = LIMIT, row_bytes: int = 2) -> Step | None:
    """The smallest W of the sweep whose data-parallel share exceeds `limit`; None if none does."""
    return next((s for s in (step(recipe, w, design, row_bytes) for w in sweep(recipe)) if s.share > limit), None)


def dominant(s: Step) -> str:
    """What most of the data-parallel cost is: the head, or communication's fixed latency or its bytes."""
    if s.head_s >= s.comm_s:
        return "head"
    return "communication, latency" if s.latency_s >= s.comm_s / 2 else "communication, bandwidth"


ASSUMPTIONS = [
    ("NVLink all-gather / reduce-scatter bus bandwidth, 8 H100 SXM", "360 GB/s",
     "NCCL maintainer on all_gather_perf -g 8: \"360 GB/s is exactly what we'd expect on H100\" "
     "(https://github.com/NVIDIA/nccl-tests/issues/326); 450 GB/s line rate, ~370 GB/s after protocol overhead "
     "(https://github.com/NVIDIA/nccl-tests/issues/212)"),
    ("InfiniBand NDR 400 Gb/s, one NIC per GPU: bus bandwidth of a ring that leaves the node", "47 GB/s",
     "NVIDIA on nccl-tests: \"For NDR @ 400Gbps you should see 46-48GB/s per NIC\" "
     "(https://github.com/NVIDIA/nccl-tests/issues/290). Conservative: the ring's slowest hop is one NIC; NCCL's "
     "rings over all 8 rails of a node can reach min(360, 8 x 47) GB/s"),
    ("Ring latency (NCCL's own model)", "Simple: 8.4 us + 3.4 us per NVLink step + 14 us per network step; "
     "LL: 6.6 + 0.6 + 2.7 us at 1/3 (one node) or 1/4 of the bus bandwidth, capped at 87.7 / 39 / 20.4 GB/s "
     "(1 / 2 / 3+ nodes); intra-node steps >= 1 us (x3 for Simple) once the ring leaves the node; "
     "the faster protocol is taken",
     "NVIDIA/nccl src/graph/tuning.cc (baseLat, hwLat, llMaxBws, getNetOverhead; all-gather: W - 1 steps, N - 1 "
     "between nodes); LL128 is left out"),
    ("Collective time", "all-gather, reduce-scatter: latency + (W - 1) / W x S / busbw; all-reduce: twice that",
     "nccl-tests doc/PERFORMANCE.md (bus bandwidth definitions)"),
    ("Encoder throughput per H100, bf16, forward + backward", "ResNet-50: 4,900 views/s at 224 px; ViT-S/16: "
     "4,370 (same FLOP rate, 4.6 vs 4.1 GFLOPs a view)",
     "2,470 img/s on one A100 80GB, mixed precision (NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5 README) "
     "x ~2 for vision models on H100 (Lambda, \"NVIDIA H100 Tensor Core GPU - Deep Learning Performance "
     "Analysis\"); GFLOPs: bench/NOTES.md, The GPU run"),
    ("Multi-crop", "a 96 px crop costs 0.18 (ResNet-50: pixels) or 0.19 (ViT-S/16: 37 of 197 tokens) of a "
     "224 px view; DINO's teacher forward of the 2 global views costs 1/3 of their forward + backward",
     "arithmetic"),
    ("Fused heads", "132 SMs; 1.9 TFLOP/s of executed bf16 FLOPs per SM (250 TFLOP/s with every SM busy, a "
     "quarter of the 989 TFLOP/s datasheet peak); a launch takes ceil(CTAs / 132) waves of one CTA's work",
     "the sim_xent prediction in bench/NOTES.md (0.25-0.4 ms at 2N = 8,192, D = 128: 215-340 TFLOP/s executed); "
     "grids and tiles from kernels/sim_xent.py and kernels/proto_xent.py"),
    ("Overlap", "none for the gather, the head and the loss all-reduce (engine/trainer.py train_step); DINO by "
     "images: the prototypes' gradient all-reduce overlaps the encoder's backward, taken as half the encoder "
     "time; DDP's encoder all-reduce overlaps backward and is not counted", "engine/trainer.py, a choice"),
    ("Design limit", f"communication + head > {LIMIT:.0%} of a step", "a choice"),
]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}" if seconds < 0.1 else f"{seconds * 1e3:,.0f}"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 20:,.1f}"


def contrastive_table(recipe: Recipe) -> list[str]:
    lines = ["| W | images per GPU | nodes | gathered MiB fp32 / bf16 | comm ms fp32 / bf16 | head GFLOP per rank | "
             "head ms per rank now / split-column | encoder ms | share fp32 / bf16 / bf16 + split-column |",
             "|---|---|---|---|---|---|---|---|---|"]
    for w in WORLDS:
        wide, now, split = step(recipe, w, ROWS, 4), step(recipe, w, ROWS, 2), step(recipe, w, ROWS_SPLIT, 2)
        lines.append(f"| {w} | {recipe.global_batch(w) // w} | {nodes(w)} | {_mib(wide.gathered)} / "
                     f"{_mib(now.gathered)} | {_ms(wide.comm_s)} / {_ms(now.comm_s)} | {now.head_flops / 1e9:,.1f} | "
                     f"{_ms(now.head_s)} / {_ms(split.head_s)} | {_ms(now.encoder_s)} | {wide.share:.1%} / "
                     f"{now.share:.1%} / {split.share:.1%} |")
    return lines


def dino_table(recipe: Recipe) -> list[str]:
    lines = [f"| W | images per GPU | gathered MiB (fp16) | comm ms now / by images | head TFLOP per rank now / "
             f"by images | head ms now / by images / + split-K | encoder ms | share now / by images / + split-K |",
             "|---|---|---|---|---|---|---|---|"]
    for w in WORLDS:
        now, split, fill = (step(recipe, w, d) for d in DESIGNS["dino"])
        lines.append(f"| {w} | {recipe.global_batch(w) // w} | {_mib(now.gathered)} | {_ms(now.comm_s)} / "
                     f"{_ms(split.comm_s)} | {now.head_flops / 1e12:.3f} / {split.head_flops / 1e12:.3f} | "
                     f"{_ms(now.head_s)} / {_ms(split.head_s)} / {_ms(fill.head_s)} | {_ms(now.encoder_s)} | "
                     f"{now.share:.1%} / {split.share:.1%} / {fill.share:.1%} |")
    return lines


def limits_table() -> list[str]:
    lines = [f"| recipe | design | first W over {LIMIT:.0%} | share there | mostly |", "|---|---|---|---|---|"]
    for recipe in RECIPES:
        for design in DESIGNS["dino" if recipe.prototypes else "contrastive"]:
            s = first_over(recipe, design)
            where = (f"{s.world} | {s.share:.0%} | {dominant(s)}" if s else
                     f"none up to {sweep(recipe)[-1]} | — | —")
            lines.append(f"| {recipe.name} | {design} | {where} |")
    return lines


def markdown(provenance: str = "") -> str:
    """Every table and the assumptions; `provenance` (commit, date) under the title."""
    lines = ["# Data-parallel scaling on paper (no measurement: every input is an assumption below)", ""]
    lines += [provenance, ""] if provenance else []
    for recipe in RECIPES:
        lines += [f"## {recipe.name}", ""]
        lines += contrastive_table(recipe) if not recipe.prototypes else dino_table(recipe)
        lines.append("")
    lines += ["## Where the design must change", ""] + limits_table() + ["", "## Assumptions", "",
                                                                       "| what | value | source |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {source} |" for what, value, source in ASSUMPTIONS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastssl.bench.scaling_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    import torch

    from .harness import context

    where = context(torch.device("cpu"))
    text = markdown(f"Computed, not measured: commit {where['commit']}; {where['date']}")
    print(text, end="")
    if args.out:
        from fastssl.loaders import atomic

        atomic.write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
