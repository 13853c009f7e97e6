"""`fastssl bench kernels --kernel sim_xent`: the fused similarity cross-entropy against its eager
reference and torch.compile of that reference, in one process, on the same inputs.

The problem is SimCLR's NT-Xent at temperature 0.5: z = L2-normalised (2N x D) random rows, two
views per image (instance ids arange(N) twice), q = k = z, each row's own column masked. Modes, all
with autograd recording, as in training:
- forward: the loss (the forward also saves what backward needs, so that is part of its cost);
- backward: torch.autograd.grad alone, after an untimed forward on its own buffer (kernel_bench.prepare);
- forward+backward: both, what one training step pays for its loss.
The first call of each provider per (shape, dtype) is the untimed correctness check; it is where
torch.compile compiles (once per shape and dtype, static shapes) and the Triton autotuner runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from fastssl.kernels import sim_xent
from fastssl.kernels.reference import sim_xent_reference

from . import kernel_bench, kernel_report
from .harness import Row, context
from .kernel_timing import buffer_count

TEMPERATURE = 0.5
PROVIDERS = ("triton", "eager", "compile")
MODES = ("forward", "backward", "forward+backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = {"small": [(256, 128), (512, 128)],
         "full": [(n, d) for d in (128, 256) for n in (1024, 4096, 8192, 16384, 65536, 131072)]}
MPD_FLOPS = {"forward": 2, "backward": 4, "forward+backward": 6}  # algorithmic: recomputed logits not counted
HEADLINE = ("2N=8192 D=128", "bf16", "forward+backward")
ERRORS = (("forward", "rel error loss"), ("backward", "rel error grad"))
REFERENCE_CHUNK_BYTES = 2 << 30


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """small, full, or a comma-separated list of 2NxD such as 8192x128."""
    return kernel_bench.parse_shapes(spec, SIZES, "2NxD", lambda n2, d: n2 >= 2 and n2 % 2 == 0 and d >= 1,
                                     "with an even 2N >= 2 and D >= 1, e.g. 8192x128,16384x256")


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


def _inputs(n2: int, d: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Distinct random L2-normalised embeddings (never zeros), leaves requiring grad, enough to outgrow the cache."""
    gen = torch.Generator(device=device).manual_seed(0)
    count = buffer_count(n2 * d * dtype.itemsize, device)
    return [torch.nn.functional.normalize(torch.randn(n2, d, device=device, generator=gen), dim=1).to(dtype)
            .requires_grad_() for _ in range(count)]


def _cases(shapes: list[tuple[int, int]], dtypes: list[str], device: torch.device):
    """One case per (shape, dtype), made when its turn comes; its fixed part is the instance ids."""
    where = context(device)
    for n2, d in shapes:
        ids = torch.arange(n2 // 2, device=device).repeat(2)
        for dtype in dtypes:
            buffers = _inputs(n2, d, DTYPES[dtype], device)
            loss, grad = reference_loss_and_grad(buffers[0], ids)
            yield kernel_bench.Case("sim_xent", f"2N={n2} D={d}", dtype, buffers,
                                    (torch.tensor(loss, dtype=torch.float64), (grad,)), where, fixed=ids,
                                    flops={m: f * n2 * n2 * d for m, f in MPD_FLOPS.items()})


def _make(case: kernel_bench.Case, provider: str):
    """(forward, backward) of a provider: the loss of z, and d loss / d z."""
    return loss_fn(provider, case.fixed), lambda value, z: torch.autograd.grad(value, z)


def measure(shapes: list[tuple[int, int]], dtypes: list[str], modes: list[str], providers: list[str], *,
            reps: int, warmup: int, device: torch.device, progress=print) -> list[Row]:
    """Every provider on every (shape, dtype), all on the same inputs; a progress line per provider."""
    return kernel_bench.measure(_cases(shapes, dtypes, device), providers, _make, ERRORS, modes, reps=reps,
                                warmup=warmup, device=device, progress=progress)


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
             "rel error = ||x - ref|| / ||ref|| against float64 on the same input values, for the loss and its "
             "gradient with respect to z (through q and k). saved for backward = the distinct storages autograd "
             "keeps from forward to backward, inputs included: O((M + P) D) for the Triton kernel, O(M P) for "
             "the references."]
    notes += ["", *kernel_report.method_notes(rows, reps, warmup)]
    notes += kernel_report.flops_notes(rows, "with M = P = 2N: 2 M P D forward, 4 M P D backward (the backward's "
                                       "recomputed logits not counted), 6 M P D both")
    return notes


def write_all(rows: list[Row], out_dir: Path, reps: int, warmup: int) -> list[Path]:
    """kernels_sim_xent_<device>.{csv,md,png}."""
    title = "sim_xent: fused Triton kernel vs eager reference vs torch.compile"
    return kernel_report.write_all(rows, out_dir, "sim_xent", title, _notes(rows, reps, warmup), "triton",
                                   kernel_report.floors(rows[0].device))
