"""`fastssl bench kernels --kernel proto_xent`: the fused prototype cross-entropy against its eager
reference and torch.compile of that reference, in one process, on the same inputs.

The problem is DINO's loss at its temperatures (student 0.1, teacher 0.04): Vs student views of B
images (the first Vt are the teacher's crops), unit rows, K unit prototypes for the student and a
nearby set for the teacher, a centre. Modes, all with autograd recording, as in training:
- forward: the loss and teacher_mean (the forward also saves what backward needs);
- backward: torch.autograd.grad of the loss for student and w_student alone, after an untimed forward;
- forward+backward: both, what one training step pays for its loss.
The first call of each provider per (shape, dtype) is the untimed correctness check; it is where
torch.compile compiles and the Triton autotuner runs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastssl.kernels import proto_xent
from fastssl.kernels.reference import proto_xent_reference

from . import kernel_bench, kernel_report
from .harness import Row, context
from .kernel_timing import buffer_count

STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.04
PROVIDERS = ("triton", "eager", "compile")
MODES = ("forward", "backward", "forward+backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = {"small": [(4, 2, 32, 512, 64), (10, 2, 16, 1024, 32)],
         "full": [(10, 2, 256, 65536, 256), (10, 2, 256, 16384, 256), (2, 2, 256, 65536, 256)]}
HEADLINE = ("Vs=10 Vt=2 B=256 K=65536 D=256", "bf16", "forward+backward")
TARGETS = {"eager": 2.0, "compile": 1.3}  # least speedup of triton on one H100, forward+backward
ERRORS = (("forward", "rel error loss"), ("forward", "rel error teacher_mean"), ("backward", "rel error grad student"),
          ("backward", "rel error grad w_student"))


def label(vs: int, vt: int, b: int, k: int, d: int) -> str:
    return f"Vs={vs} Vt={vt} B={b} K={k} D={d}"


def parse_sizes(spec: str) -> list[tuple[int, int, int, int, int]]:
    """small, full, or a comma-separated list of VsxVtxBxKxD such as 10x2x256x65536x256."""
    return kernel_bench.parse_shapes(spec, SIZES, "VsxVtxBxKxD",
                                     lambda vs, vt, b, k, d: vs >= 2 and 1 <= vt <= vs and min(b, k, d) >= 1,
                                     "with Vs >= 2, 1 <= Vt <= Vs and B, K, D >= 1, e.g. 10x2x256x65536x256")


def loss_fn(provider: str, w_student: torch.Tensor, w_teacher: torch.Tensor, center: torch.Tensor):
    """(student, teacher) -> (loss, teacher_mean) by one provider. Call once per (shape, dtype): "compile"
    starts from a clean cache."""
    def reference(student, teacher):
        return proto_xent_reference(student, teacher, w_student, w_teacher, center, student_temp=STUDENT_TEMP,
                                    teacher_temp=TEACHER_TEMP)

    if provider == "triton":
        return lambda views: proto_xent(*views, w_student, w_teacher, center, student_temp=STUDENT_TEMP,
                                        teacher_temp=TEACHER_TEMP, impl="triton")
    run = reference
    if provider == "compile":
        torch._dynamo.reset()  # else past dynamo's recompile limit later shapes would silently run eager
        run = torch.compile(reference, dynamic=False)
    return lambda views: run(*views)


def _unit(*shape, gen, device) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, device=device, generator=gen), dim=-1)


def _cases(shapes, dtypes: list[str], device: torch.device):
    """One case per (shape, dtype), made when its turn comes: buffers of (student, teacher) views; the
    prototypes and centre are fixed, as in training."""
    where = context(device)
    for vs, vt, b, k, d in shapes:
        for dtype in dtypes:
            dt = DTYPES[dtype]
            gen = torch.Generator(device=device).manual_seed(0)
            w = _unit(k, d, gen=gen, device=device)
            w_student = w.to(dt).requires_grad_()
            w_teacher = torch.nn.functional.normalize(w + 0.1 * _unit(k, d, gen=gen, device=device), dim=-1).to(dt)
            center = 0.1 * torch.randn(k, device=device, generator=gen)
            buffers = []
            for _ in range(buffer_count((vs + vt) * b * d * dt.itemsize, device)):
                student = _unit(vs, b, d, gen=gen, device=device)
                teacher = torch.nn.functional.normalize(student[:vt] + 0.3 * _unit(vt, b, d, gen=gen, device=device),
                                                        dim=-1)
                buffers.append((student.to(dt).requires_grad_(), teacher.to(dt)))
            student64 = buffers[0][0].detach().double().requires_grad_()
            w64 = w_student.detach().double().requires_grad_()
            loss, mean = proto_xent_reference(student64, buffers[0][1].double(), w64, w_teacher.double(),
                                              center.double(), student_temp=STUDENT_TEMP, teacher_temp=TEACHER_TEMP)
            grads = torch.autograd.grad(loss, (student64, w64))
            flops = {"forward": 2 * (vs + vt) * b * k * d, "backward": 4 * vs * b * k * d}
            flops["forward+backward"] = flops["forward"] + flops["backward"]
            yield kernel_bench.Case("proto_xent", label(vs, vt, b, k, d), dtype, buffers,
                                    ((loss.detach(), mean), grads), where, fixed=(w_student, w_teacher, center),
                                    flops=flops)
            del buffers, loss, mean, grads


def _make(case: kernel_bench.Case, provider: str):
    """(forward, backward) of a provider: (loss, teacher_mean) of the views, and d loss / d (student, w_student)."""
    w_student, w_teacher, center = case.fixed
    return (loss_fn(provider, w_student, w_teacher, center),
            lambda out, views: torch.autograd.grad(out[0], (views[0], w_student)))


def measure(shapes, dtypes: list[str], modes: list[str], providers: list[str], *, reps: int, warmup: int,
            device: torch.device, progress=print) -> list[Row]:
    """Every provider on every (shape, dtype), all on the same inputs; a progress line per provider."""
    return kernel_bench.measure(_cases(shapes, dtypes, device), providers, _make, ERRORS, modes, reps=reps,
                                warmup=warmup, device=device, progress=progress)


def _notes(rows: list[Row], reps: int, warmup: int) -> list[str]:
    """The headline against the targets first, then what was measured and how."""
    at = {(r.provider, r.shape, r.dtype, r.mode): r for r in rows if r.metric == "time"}
    subject = at.get(("triton", *HEADLINE))
    vs = {b: kernel_report.speedup(at.get((b, *HEADLINE)), subject) for b in TARGETS}
    headline = " ".join(HEADLINE)
    targets = f"targets on one H100: >= {TARGETS['eager']:g}x eager and >= {TARGETS['compile']:g}x torch.compile"
    notes = [f"**{headline}: triton vs eager {vs['eager']}, vs torch.compile {vs['compile']}** ({targets})."
             if subject else f"The headline case ({headline}; {targets}) is not in this run.",
             "",
             f"Problem: DINO's loss at student temperature {STUDENT_TEMP:g} and teacher temperature {TEACHER_TEMP:g}: "
             "Vs student views of B images, the first Vt the teacher's crops (teacher rows = the student's plus "
             "noise, renormalised), unit rows, K unit prototypes for the student and a perturbed copy for the "
             "teacher, a centre; the loss is the mean over the Vt (Vs - 1) pairs (t, s != t) and the images. "
             "Providers: `triton` = `fastssl.kernels.proto_xent(impl=\"triton\")`; `eager` = "
             "`kernels.reference.proto_xent_reference` (materialises the Vs x B x K student and Vt x B x K teacher "
             "logits, in fp32 for bf16 inputs); `compile` = `torch.compile` of the reference (default mode, static "
             "shapes, compiled once per shape and dtype).",
             "",
             "rel error = ||x - ref|| / ||ref|| against float64 on the same input values, for the loss, teacher_mean "
             "and the gradients of student and w_student. saved for backward = the distinct storages autograd keeps "
             "from forward to backward, inputs included: the inputs and (Vs + Vt) B fp32 log-sum-exps for the "
             "Triton kernels, O((Vs + Vt) B K) for the references. Extra memory target: O(V B + K) beyond the "
             "inputs and their gradients (the Triton backward adds the fp32 (Vt, B, D) teacher share of the "
             "student gradient)."]
    notes += ["", *kernel_report.method_notes(rows, reps, warmup)]
    notes += kernel_report.flops_notes(rows, "2 (Vs + Vt) B K D forward, 4 Vs B K D backward (the recomputed "
                                       "logits not counted), their sum both")
    return notes


def write_all(rows: list[Row], out_dir: Path, reps: int, warmup: int) -> list[Path]:
    """kernels_proto_xent_<device>.{csv,md,png}."""
    title = "proto_xent: fused Triton kernels vs eager reference vs torch.compile"
    return kernel_report.write_all(rows, out_dir, "proto_xent", title, _notes(rows, reps, warmup), "triton",
                                   kernel_report.floors(rows[0].device))
