"""proto_xent, the fused Triton path (interpreter on CPU) and the reference path, against the definition.

`pair_loop` below is the loss as its docstring defines it, one cross-entropy per view pair (t, s != t)
in float64, written independently of kernels.reference. Every case compares the loss, teacher_mean
and the gradients of student and w_student (backward seeded with 1.7, not 1) on the same input values.
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fastssl.kernels import runtime
from fastssl.kernels.proto_xent import proto_xent

interpreter = pytest.mark.skipif(not runtime.INTERPRET, reason="TRITON_INTERPRET=1 was not set before import")

# Relative errors against float64 on the same values. fp32: the kernels accumulate in fp32 at temperatures
# 0.1 / 0.04 (logits to 25). bf16: the interpreter computes bf16 in fp32 (runtime.kernel_dtype), so the loss
# and teacher_mean keep fp32's error; the gradients come back rounded to bf16 (2^-9 relative per element).
TOL = {torch.float32: dict(loss=1e-6, grad=1e-5), torch.bfloat16: dict(loss=1e-6, grad=4e-3)}
SEED_GRAD = 1.7


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.detach().double() - expected).norm() / expected.norm())


def pair_loop(student, teacher, w_student, w_teacher, center, student_temp, teacher_temp):
    """(loss, teacher_mean, d loss/d student, d loss/d w_student) in float64: the mean over the pairs
    (t, s != t) and the images of -sum_k softmax((y_t w_t^T - center) / tau_t)_k log softmax(x_s w_s^T / tau_s)_k."""
    x = student.detach().double().requires_grad_()
    ws = w_student.detach().double().requires_grad_()
    teacher_logits = teacher.detach().double() @ w_teacher.detach().double().T       # (Vt, B, K)
    centred = teacher_logits - (0.0 if center is None else center.double())
    losses = []
    for t in range(teacher.shape[0]):
        target = torch.softmax(centred[t] / teacher_temp, dim=-1)
        for s in range(student.shape[0]):
            if s != t:
                log_q = torch.log_softmax(x[s] @ ws.T / student_temp, dim=-1)
                losses.append(-(target * log_q).sum(-1).mean())
    loss = torch.stack(losses).mean()
    loss.backward()
    return loss.detach(), teacher_logits.flatten(0, 1).mean(0), x.grad, ws.grad


def problem(vs, vt, b, k, d, *, dtype=torch.float32, center=True, shared=False, scale=1.0, seed=0, device="cpu"):
    """DINO-like inputs: unit rows (times `scale`), teacher rows near the student's global crops, unit
    prototypes, a small centre; shared: SwAV's w_teacher None (the student's prototypes, detached)."""
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)

    student = scale * unit(vs, b, d)
    teacher = scale * torch.nn.functional.normalize(student[:vt] + 0.3 * unit(vt, b, d), dim=-1)
    w_student = unit(k, d)
    w_teacher = None if shared else torch.nn.functional.normalize(w_student + 0.1 * unit(k, d), dim=-1)
    return dict(student=student.to(device, dtype).requires_grad_(), teacher=teacher.to(device, dtype),
                w_student=w_student.to(device, dtype).requires_grad_(),
                w_teacher=None if shared else w_teacher.to(device, dtype),
                center=(0.1 * torch.randn(k, generator=gen)).to(device) if center else None)


def check(inputs, impl="triton", student_temp=0.1, teacher_temp=0.04, dtype=torch.float32, tol=None):
    """Runs proto_xent on `inputs`, asserts its relative errors against pair_loop on the same values are
    within `tol` (TOL[dtype] when None) and returns its output."""
    out = proto_xent(**inputs, student_temp=student_temp, teacher_temp=teacher_temp, impl=impl)
    (SEED_GRAD * out.loss).backward()
    w_teacher = inputs["w_student"] if inputs["w_teacher"] is None else inputs["w_teacher"]
    loss, mean, d_student, d_w = pair_loop(inputs["student"], inputs["teacher"], inputs["w_student"], w_teacher,
                                           inputs["center"], student_temp, teacher_temp)
    assert out.loss.shape == () and out.teacher_mean.shape == mean.shape
    assert inputs["student"].grad.dtype == inputs["w_student"].grad.dtype == inputs["student"].dtype
    if inputs["student"].dtype != torch.float64:
        assert out.loss.dtype == out.teacher_mean.dtype == torch.float32
    errors = {"loss": rel_err(out.loss, loss), "teacher_mean": rel_err(out.teacher_mean, mean),
              "student": rel_err(inputs["student"].grad, SEED_GRAD * d_student),
              "w_student": rel_err(inputs["w_student"].grad, SEED_GRAD * d_w)}
    tol = tol or TOL[dtype]
    bounds = {name: tol["loss" if name in ("loss", "teacher_mean") else "grad"] for name in errors}
    assert all(errors[name] <= bounds[name] for name in errors), errors
    return out


@interpreter
@pytest.mark.parametrize("vs, vt, b, k, d, center, dtype", [
    (2, 2, 16, 300, 48, True, torch.float32),      # DINO without local crops
    (3, 2, 13, 300, 48, True, torch.float32),      # 13 images: padded rows in the one image block
    (8, 2, 16, 300, 48, False, torch.float32),     # multi-crop
    (3, 1, 16, 300, 20, True, torch.float32),      # one teacher view; D not a power of two
    (4, 2, 20, 130, 24, True, torch.float32),      # two image blocks (padded), K = 130 = 128 + 2
    (3, 2, 4, 40, 130, True, torch.float32),       # D = 130 in chunks of 64, 64, 2
    (4, 2, 16, 256, 32, True, torch.bfloat16),
    (3, 1, 13, 300, 40, False, torch.bfloat16),
], ids=["vs2-vt2", "vs3-vt2-b13", "vs8-vt2-nocenter", "vs3-vt1-d20", "vs4-b20-k130", "d130-chunks", "bf16",
        "bf16-vt1-nocenter"])
def test_triton_path_is_the_pair_loop(vs, vt, b, k, d, center, dtype):
    check(problem(vs, vt, b, k, d, center=center, dtype=dtype), dtype=dtype)


@interpreter
def test_swav_shared_prototypes_get_the_student_gradient_only():
    """w_teacher None: the teacher reads w_student detached, so its gradient is the student side's alone."""
    check(problem(3, 2, 16, 200, 32, shared=True, center=False), student_temp=0.1, teacher_temp=0.05)


@interpreter
def test_large_logits_stay_finite():
    """Rows of norm 4 at temperatures 0.1 / 0.04: logits up to 400, exp would overflow without the running max."""
    out = check(problem(3, 2, 16, 300, 32, scale=4.0, seed=3))
    assert math.isfinite(out.loss.item())


@interpreter
def test_strided_views_reach_the_kernels_as_they_are():
    """Student and teacher as (B, V, D) storages transposed to (V, B, D), prototypes a column slice."""
    gen = torch.Generator().manual_seed(4)
    store = torch.randn(16, 3, 40, generator=gen)
    student_leaf = store.clone().requires_grad_()
    w_store = torch.nn.functional.normalize(torch.randn(200, 64, generator=gen), dim=-1).requires_grad_()
    teacher = torch.randn(16, 2, 40, generator=gen).transpose(0, 1)
    student, w_student = student_leaf.transpose(0, 1), w_store[:, :40]
    assert not (student.is_contiguous() or teacher.is_contiguous() or w_student.is_contiguous())
    out = proto_xent(student, teacher, w_student, student_temp=0.1, teacher_temp=0.04, impl="triton")
    (SEED_GRAD * out.loss).backward()
    loss, mean, d_student, d_w = pair_loop(student, teacher, w_student, w_student, None, 0.1, 0.04)
    assert rel_err(out.loss, loss) < 1e-6 and rel_err(out.teacher_mean, mean) < 1e-6
    assert rel_err(student_leaf.grad.transpose(0, 1), SEED_GRAD * d_student) < 1e-5
    assert rel_err(w_store.grad[:, :40], SEED_GRAD * d_w) < 1e-5 and not w_store.grad[:, 40:].any()


@interpreter
def test_no_gradient_reaches_the_teacher_side():
    inputs = problem(3, 2, 16, 100, 16)
    for name in ("teacher", "w_teacher", "center"):
        inputs[name].requires_grad_()
    out = proto_xent(**inputs, student_temp=0.1, teacher_temp=0.04, impl="triton")
    out.loss.backward()
    assert not out.teacher_mean.requires_grad
    assert all(inputs[name].grad is None for name in ("teacher", "w_teacher", "center"))
    assert inputs["student"].grad is not None and inputs["w_student"].grad is not None


class Allocations(TorchDispatchMode):
    """The bytes of every tensor any torch op makes while active (the interpreter's byte views included)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sizes += [t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


@interpreter
def test_forward_and_backward_keep_no_views_by_images_by_prototypes_buffer():
    """With K D < B K < V B K, no tensor made in forward or backward reaches B x K fp32 (the kernels
    write only into what torch allocates), and what autograd keeps beyond the inputs is the (Vs + Vt) B
    log-sum-exps."""
    vs, vt, b, k, d = 4, 2, 16, 256, 8
    inputs = problem(vs, vt, b, k, d)
    inputs["student"] = inputs["student"].detach().clone().requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    given = {t.untyped_storage().data_ptr() for t in inputs.values() if t is not None}
    with Allocations() as made, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = proto_xent(**inputs, student_temp=0.1, teacher_temp=0.04, impl="triton")
        out.loss.backward()
    extra = [t for t in saved if t is not None and t.untyped_storage().data_ptr() not in given]
    assert sum(t.numel() for t in extra) == (vs + vt) * b
    assert max(made.sizes) <= 4 * k * d < 4 * b * k
    assert inputs["student"].grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2, 13, 50, 20), (4, 1, 8, 30, 16)])
def test_reference_path_is_the_pair_loop(shape, dtype):
    """impl="reference", and float64 under impl="auto", which always takes the reference."""
    vs, vt, b, k, d = shape
    check(problem(vs, vt, b, k, d, dtype=dtype), impl="reference" if dtype == torch.float32 else "auto",
          dtype=torch.float32)


def test_float64_is_refused_by_the_triton_path():
    with pytest.raises(ValueError, match="impl='triton' takes fp32, fp16 or bf16"):
        proto_xent(**problem(2, 2, 4, 8, 4, dtype=torch.float64), student_temp=0.1, teacher_temp=0.04, impl="triton")


def _bad(**change):
    inputs = problem(3, 2, 4, 10, 6)
    temps = {"student_temp": change.pop("student_temp", 0.1), "teacher_temp": change.pop("teacher_temp", 0.04)}
    return {**inputs, **change, **temps}


@pytest.mark.parametrize("kwargs, message", [
    (_bad(student=torch.randn(12, 6)), r"student \(12, 6\) and teacher \(2, 4, 6\) must be 3-D"),
    (_bad(student=torch.randn(1, 4, 6), teacher=torch.randn(1, 4, 6)), "Vs=1 student views and Vt=1 teacher views: "
                                                                        "need Vs >= 2"),
    (_bad(teacher=torch.randn(4, 4, 6)), r"Vs=3 student views and Vt=4 teacher views: need Vs >= 2 and 1 <= Vt <= Vs"),
    (_bad(teacher=torch.randn(2, 5, 6)), r"teacher \(2, 5, 6\): must have the student's images and features "
                                         r"\(Vt, 4, 6\)"),
    (_bad(w_student=torch.randn(10, 7)), r"w_student \(10, 7\): must be \(K, D\) prototypes with D=6"),
    (_bad(w_teacher=torch.randn(11, 6)), r"w_teacher \(11, 6\): must match w_student \(10, 6\)"),
    (_bad(center=torch.randn(1, 10)), r"center \(1, 10\): must have one value per prototype \(10,\)"),
    (_bad(w_student=torch.randn(0, 6), w_teacher=torch.randn(0, 6), center=None), "B=4, D=6, K=0: every size"),
    (_bad(student_temp=0.0), "student_temp=0.0: must be a finite Python number > 0"),
    (_bad(teacher_temp=torch.tensor(0.04)), "teacher_temp=tensor"),
    (_bad(teacher_temp=math.inf), "teacher_temp=inf: must be a finite"),
    (_bad(teacher=torch.ones(2, 4, 6, dtype=torch.long)), "inputs must be floating point"),
], ids=["2d", "one-view", "vt-above-vs", "teacher-batch", "w-features", "w-teacher", "center", "empty", "temp-zero",
        "temp-tensor", "temp-inf", "integer"])
@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_bad_arguments_name_the_argument_and_rule(kwargs, message, impl):
    with pytest.raises(ValueError, match=message):
        proto_xent(**kwargs, impl=impl)


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="proto_xent: impl='cuda': must be one of auto, triton, reference"):
        proto_xent(**_bad(), impl="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, shape, tol", [
    (torch.bfloat16, (10, 2, 128, 8192, 256), dict(loss=1e-4, grad=2e-2)),   # bf16 operands, fp32 sums
    (torch.float32, (4, 2, 64, 2048, 64), dict(loss=1e-5, grad=1e-4)),      # IEEE fp32 dots (TF32 off)
], ids=["bf16-multicrop-d256", "fp32"])
def test_cuda_kernels_are_the_pair_loop_within_the_memory_bound(dtype, shape, tol):
    """On a GPU: the compiled kernels (atomics, pipelined loads, tensor-core dots) against the loop, and
    the second call's peak extra memory within the gradients, the fp32 (Vt, B, D) teacher share and
    O(V B + K), as bench/gpu_targets.proto_xent states it."""
    vs, vt, b, k, d = shape
    check(problem(vs, vt, b, k, d, dtype=dtype, device="cuda"), dtype=dtype, tol=tol)
    inputs = problem(vs, vt, b, k, d, dtype=dtype, device="cuda", seed=1)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    proto_xent(**inputs, student_temp=0.1, teacher_temp=0.04).loss.backward()
    torch.cuda.synchronize()
    itemsize = dtype.itemsize
    bound = itemsize * (vs * b * d + k * d) + 4 * vt * b * d + 16 * (vs + vt) * b + 8 * k + (8 << 20)
    assert torch.cuda.max_memory_allocated() - before <= bound
