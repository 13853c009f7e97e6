"""`fastssl bench kernels --kernel sim_xent`: the fused similarity cross-entropy against its eager
reference and torch.compile of that reference, in one process, on the same inputs.

The problem is SimCLR's NT-Xent at temperature 0.5: z = L2-normalised (2N x D) random rows, two
views per image (instance ids arange(N) twice), q = k = z, each row's own column masked. Modes, all
with autograd recording, as in training:
- forward: the loss (the forward also saves what backward needs, so that is part of its cost);
- backward: torch.autograd.grad alone. Each repetition first runs the forward, untimed, on its own
  buffer: timing repeated backwards of one retained graph would reread one set of inputs that the
  previous repetition left in cache, which no training step does;
- forward+backward: both, what one training step pays for its loss.
The first call of each provider per (shape, dtype) is the untimed correctness check; it is where
torch.compile compiles (once per shape and dtype, static shapes) and the Triton autotuner runs.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from fastssl.config import ConfigError
from fastssl.kernels import sim_xent
from fastssl.kernels.reference import sim_xent_reference

from . import kernel_report
from .harness import Row, context, device_slug, summarize, write_csv
from .kernel_timing import buffer_count, peak_extra_bytes, saved_bytes, time_calls, unless_oom

TEMPERATURE = 0.5
PROVIDERS = ("triton", "eager", "compile")
MODES = ("forward", "backward", "forward+backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = {"small": [(256, 128), (512, 128)],
         "full": [(n, d) for d in (128, 256) for n in (1024, 4096, 8192, 16384, 65536, 131072)]}
MPD_FLOPS = {"forward": 2, "backward": 4, "forward+backward": 6}  # algorithmic: recomputed logits not counted
HEADLINE = ("2N=8192 D=128", "bf16", "forward+backward")
REFERENCE_CHUNK_BYTES = 2 << 30


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """small, full, or a comma-separated list of 2NxD such as 8192x128."""
    if spec in SIZES:
        return SIZES[spec]
    try:
        shapes = [tuple(int(x) for x in item.split("x")) for item in spec.lower().split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or s[0] < 2 or s[0] % 2 or s[1] < 1 for s in shapes):
        raise ConfigError(f"--sizes {spec!r}: must be small, full, or comma-separated 2NxD with an even "
                          f"2N >= 2 and D >= 1, e.g. 8192x128,16384x256")
    return shapes


def floors(device: str) -> dict[str, float]:
    """Peak dense TFLOP/s the Triton kernel is shown against (H100/H200 SXM; none known for other devices).

    bf16: tensor cores, as measured (GPU.md; 989 on the datasheet). fp32: the kernel follows torch's
    TF32 switch; off (torch's default) it is IEEE FMA on CUDA cores, 67 on the datasheet; on, TF32
    tensor cores, 495 on the datasheet.
    """
    if "H100" not in device and "H200" not in device:
        return {}
    return {"bf16": 800.0, "fp32": 495.0 if torch.backends.cuda.matmul.allow_tf32 else 67.0}


def loss_fn(provider: str, ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """NT-Xent of z by one provider. Call once per (shape, dtype): "compile" starts from a clean cache."""
    def reference(z):
        return sim_xent_reference(z, z, scale=1 / TEMPERATURE, instance_ids=ids, self_mask=True)

    if provider == "triton":
        return lambda z: sim_xent(z, z, scale=1 / TEMPERATURE, instance_ids=ids, self_mask=True, impl="triton")
    if provider == "compile":
        torch._dynamo.reset()  # else past dynamo's recompile limit later shapes would silently run eager
        return torch.compile(reference, dynamic=False)
    return reference


def prepare(mode: str, loss: Callable) -> Callable:
    """buffer -> the thunk to time for `mode` (see the module docstring for backward)."""
    if mode == "forward":
        return lambda z: lambda: loss(z)
    if mode == "forward+backward":
        return lambda z: lambda: torch.autograd.grad(loss(z), z)

    def after_forward(z):
        value = loss(z)
        return lambda: torch.autograd.grad(value, z)
    return after_forward


def reference_loss_and_grad(z: torch.Tensor, ids: torch.Tensor, chunk_rows: int | None = None):
    """Float64 loss and d loss / d z (through q and k), rows taken in chunks (row_offset) so any 2N fits."""
    z64 = z.detach().double().requires_grad_()
    m = z64.shape[0]
    chunk = chunk_rows or max(1, REFERENCE_CHUNK_BYTES // (8 * 8 * m))  # ~8 live (chunk x 2N) float64 buffers
    loss = 0.0
    for r0 in range(0, m, chunk):
        part = sim_xent_reference(z64[r0:r0 + chunk], z64, scale=1 / TEMPERATURE, instance_ids=ids,
                                  self_mask=True, row_offset=r0, reduction="sum") / m
        part.backward()
        loss += part.item()
    return loss, z64.grad


def _errors(loss: Callable, z: torch.Tensor, reference) -> tuple[float, float]:
    """Relative error of the loss and of its gradient against the float64 reference on the same values."""
    value = loss(z)
    (grad,) = torch.autograd.grad(value, z)
    ref_loss, ref_grad = reference
    return (abs(value.item() - ref_loss) / abs(ref_loss),
            ((grad.double() - ref_grad).norm() / ref_grad.norm()).item())


def _inputs(n2: int, d: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Distinct random L2-normalised embeddings (never zeros), leaves requiring grad, enough to outgrow the cache."""
    gen = torch.Generator(device=device).manual_seed(0)
    count = buffer_count(n2 * d * dtype.itemsize, device)
    return [torch.nn.functional.normalize(torch.randn(n2, d, device=device, generator=gen), dim=1).to(dtype)
            .requires_grad_() for _ in range(count)]


@dataclass
class _Case:
    """One (shape, dtype): its inputs, their shared rotation and the float64 answer, for every provider."""
    n2: int
    d: int
    dtype: str
    buffers: list[torch.Tensor]
    cycle: Iterator[torch.Tensor]
    reference: tuple[float, torch.Tensor]
    where: dict[str, str]

    def row(self, provider: str, mode: str, metric: str, value, unit: str) -> Row:
        """value: a list of samples, one number, or None for an out-of-memory."""
        if value is None:
            stats, unit = (math.nan,) * 3, "OOM"
        else:
            stats = summarize(value) if isinstance(value, list) else (float(value),) * 3
        return Row("sim_xent", provider, f"2N={self.n2} D={self.d}", self.dtype, mode, metric, *stats, unit,
                   **self.where)


def _measure_provider(case: _Case, provider: str, ids: torch.Tensor, modes: list[str], reps: int, warmup: int,
                      device: torch.device) -> list[Row]:
    """One provider on one case: errors (its first call), saved bytes, then per mode the time and, on
    CUDA, TFLOP/s and peak extra memory. Any of them may be an OOM row."""
    loss = loss_fn(provider, ids)
    errors = unless_oom(lambda: _errors(loss, case.buffers[0], case.reference))
    rows = [case.row(provider, "forward", "rel error loss", errors and errors[0], "rel"),
            case.row(provider, "backward", "rel error grad", errors and errors[1], "rel"),
            case.row(provider, "forward", "saved for backward", unless_oom(lambda: saved_bytes(loss, next(case.cycle))),
                     "B")]
    for mode in modes:
        thunk = prepare(mode, loss)
        seconds = unless_oom(lambda: time_calls(thunk, case.cycle, reps=reps, warmup=warmup, device=device))
        rows.append(case.row(provider, mode, "time", seconds and [s * 1e3 for s in seconds], "ms"))
        if device.type == "cuda":
            flops = MPD_FLOPS[mode] * case.n2 * case.n2 * case.d
            rows.append(case.row(provider, mode, "TFLOP/s", seconds and [flops / s / 1e12 for s in seconds],
                                 "TFLOP/s"))
            rows.append(case.row(provider, mode, "peak extra memory",
                                 unless_oom(lambda: peak_extra_bytes(thunk, next(case.cycle), device)), "B"))
    return rows


def measure(shapes: list[tuple[int, int]], dtypes: list[str], modes: list[str], providers: list[str], *,
            reps: int, warmup: int, device: torch.device, progress=print) -> list[Row]:
    """Every provider on every (shape, dtype), all on the same inputs; a progress line per provider."""
    where = context(device)
    rows: list[Row] = []
    for n2, d in shapes:
        ids = torch.arange(n2 // 2, device=device).repeat(2)
        for dtype in dtypes:
            buffers = _inputs(n2, d, DTYPES[dtype], device)
            case = _Case(n2, d, dtype, buffers, itertools.cycle(buffers), reference_loss_and_grad(buffers[0], ids),
                         where)
            for provider in providers:
                new = _measure_provider(case, provider, ids, modes, reps, warmup, device)
                rows += new
                times = [f"{r.mode} {kernel_report.cell(r)}" for r in new if r.metric == "time"]
                progress(f"2N={n2} D={d} {dtype} {provider} (ms, median [p20, p80]): " + ", ".join(times))
            del buffers, case  # free this shape's inputs before the next shape's are made
    return rows


def _notes(rows: list[Row], reps: int, warmup: int) -> list[str]:
    """What was measured and how, above the tables; the headline speedups first."""
    at = {(r.provider, r.shape, r.dtype, r.mode): r for r in rows if r.metric == "time"}
    subject = at.get(("triton", *HEADLINE))
    vs = {b: kernel_report.speedup(at.get((b, *HEADLINE)), subject) for b in ("eager", "compile")}
    headline = " ".join(HEADLINE)
    notes = [f"**{headline}: triton vs eager {vs['eager']}, vs torch.compile {vs['compile']}** "
             "(targets on one H100: >= 3x and >= 1.5x)." if subject else
             f"The headline case ({headline}; H100 targets >= 3x eager, >= 1.5x torch.compile) is not in this run.",
             "",
             f"Problem: SimCLR's NT-Xent at temperature {TEMPERATURE} (scale {1 / TEMPERATURE:g}): z = L2-normalised "
             "random 2N x D rows, 2 views per image, q = k = z, each row's own column masked, mean over rows. "
             "Providers: `triton` = `fastssl.kernels.sim_xent(impl=\"triton\")`; `eager` = "
             "`kernels.reference.sim_xent_reference` (materialises the 2N x 2N logits, in fp32 for bf16 inputs); "
             "`compile` = `torch.compile` of the reference (default mode, static shapes, compiled once per shape "
             "and dtype; on a CPU its check for rows without a positive is a host-side branch that splits the graph in two; on a GPU the check is skipped, as in the kernel, and the graph is whole).",
             "",
             f"Each time: {reps} timed repetitions after {warmup} untimed warm-up ones, all after an untimed "
             "first call (the correctness check, where compilation and autotuning happen); CUDA events on a GPU, "
             "perf_counter on a CPU; inputs cycle through distinct buffers totalling more than twice the "
             "last-level cache. backward = `torch.autograd.grad` alone, after an untimed forward of its own.",
             "",
             "rel error = ||x - ref|| / ||ref|| against float64 on the same input values, for the loss and its "
             "gradient with respect to z (through q and k). saved for backward = the distinct storages autograd "
             "keeps from forward to backward, inputs included: O((M + P) D) for the Triton kernel, O(M P) for "
             "the references."]
    if rows[0].device.startswith("CPU"):
        notes += ["", "**CPU run: Triton runs in its interpreter (numpy) and the references on CPU torch, so "
                  "these times show only that every path runs; they mean nothing as absolute numbers or as "
                  "speedups. Peak memory and TFLOP/s need CUDA; saved for backward is measured on every device.**"]
    else:
        floor = floors(rows[0].device)
        notes += ["", "TFLOP/s count algorithmic FLOPs with M = P = 2N: 2 M P D forward, 4 M P D backward "
                  "(the backward's recomputed logits not counted), 6 M P D both; % of floor against "
                  + (", ".join(f"{dt} {tf:g} TFLOP/s" for dt, tf in floor.items()) if floor
                     else "no floor (none known for this device)")
                  + ". fp32 matmuls: " + ("TF32 allowed" if torch.backends.cuda.matmul.allow_tf32 else
                                          "IEEE fp32 on every provider (TF32 off, torch's default)") + "."]
    return notes


def write_all(rows: list[Row], out_dir: Path, reps: int, warmup: int) -> list[Path]:
    """CSV, Markdown and PNG named after the device, so CPU and GPU results sit side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"kernels_sim_xent_{device_slug(rows[0].device)}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(rows, paths[0])
    title = "sim_xent: fused Triton kernel vs eager reference vs torch.compile"
    kernel_report.write_markdown(rows, paths[1], title, _notes(rows, reps, warmup), "triton", floors(rows[0].device))
    kernel_report.plot(rows, paths[2], title, "forward+backward")
    return paths
