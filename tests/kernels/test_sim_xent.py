"""The fused sim_xent kernel (Triton interpreter on CPU) against the float64 reference: loss and grads.

Every case runs the Triton path with impl="triton" and compares the loss and the gradients of q, k
and col_bias with kernels.reference in float64 on the same (upcast) inputs.
"""
import pytest
import torch

from fastssl.kernels import runtime
from fastssl.kernels.reference import sim_xent_reference
from fastssl.kernels.sim_xent import nt_xent, sim_xent

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="TRITON_INTERPRET=1 was not set before import")

TOL = {torch.float32: dict(loss=2e-6, grad=2e-5), torch.float16: dict(loss=2e-5, grad=3e-3)}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-300))


def compare(q, k, *, dtype=torch.float32, same=False, bias=False, reduction="mean", **kw):
    """Runs both paths on the same values; returns the kernel's loss and the relative errors."""
    q = q.detach().to(dtype).clone().requires_grad_()  # fresh leaves: no grad carried between calls
    k = q if same else k.detach().to(dtype).clone().requires_grad_()
    col_bias = torch.randn(k.shape[0]).requires_grad_() if bias else None
    loss = sim_xent(q, k, col_bias=col_bias, reduction=reduction, impl="triton", **kw)
    (loss * torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)).sum().backward()
    q64 = q.detach().double().requires_grad_()
    k64 = q64 if same else k.detach().double().requires_grad_()
    b64 = col_bias.detach().double().requires_grad_() if bias else None
    ref = sim_xent_reference(q64, k64, col_bias=b64, reduction=reduction, **kw)
    (ref * torch.linspace(0.5, 1.5, ref.numel(), dtype=torch.float64).reshape(ref.shape)).sum().backward()
    errors = {"loss": rel_err(loss.detach(), ref.detach()), "q": rel_err(q.grad, q64.grad)}
    if not same:
        errors["k"] = rel_err(k.grad, k64.grad)
    if bias:
        errors["bias"] = rel_err(col_bias.grad, b64.grad)
    assert loss.dtype == torch.float32 and q.grad.dtype == dtype
    return loss, errors


def assert_close(errors, dtype=torch.float32):
    tol = TOL[dtype]
    for name, err in errors.items():
        assert err <= (tol["loss"] if name == "loss" else tol["grad"]), (name, err)


SIZES = (1, 7, 100, 257)


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("p", SIZES)
def test_targets_mode_with_bias_every_size(m, p):
    d = (3, 64, 130)[(SIZES.index(m) + SIZES.index(p)) % 3]
    gen = torch.Generator().manual_seed(m * 1000 + p)
    q, k = torch.randn(m, d, generator=gen), torch.randn(p, d, generator=gen)
    targets = torch.randint(0, p, (m,), generator=gen)
    torch.manual_seed(p)
    _, errors = compare(q, k, scale=0.7, targets=targets, bias=True)
    assert_close(errors)


@pytest.mark.parametrize("views", [2, 3, 4])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_instance_mode_is_nt_xent_for_any_views(views, temperature, dtype):
    """k is q (grads of both roles summed), self-masked, unit rows: SimCLR's loss for `views` views."""
    batch = 33
    gen = torch.Generator().manual_seed(views)
    z = torch.nn.functional.normalize(torch.randn(views * batch, 64, generator=gen), dim=1)
    ids = torch.arange(batch).repeat(views)
    _, errors = compare(z, None, dtype=dtype, same=True, scale=1 / temperature, instance_ids=ids, self_mask=True)
    assert_close(errors, dtype)


@pytest.mark.parametrize("d", [3, 130])
def test_instance_mode_uneven_view_counts_and_no_self_mask(d):
    """257 columns with ids mod 100: rows have 2 or 3 positives; the self column stays in the softmax."""
    gen = torch.Generator().manual_seed(d)
    q, k = torch.randn(257, d, generator=gen), torch.randn(257, d, generator=gen)
    _, errors = compare(q, k, scale=0.3, instance_ids=torch.arange(257) % 100, bias=True)
    assert_close(errors)


@pytest.mark.parametrize("m,p,offset", [(7, 100, 50), (100, 257, 157), (1, 7, 0), (100, 257, 0)])
def test_self_mask_with_row_offset_is_one_rank_of_gathered_columns(m, p, offset):
    """A rank's rows against all ranks' columns: row i is column offset + i, masked from its softmax."""
    gen = torch.Generator().manual_seed(m + offset)
    k = torch.randn(p, 64, generator=gen)
    q = k[offset:offset + m] + 0.01 * torch.randn(m, 64, generator=gen)
    ids = torch.arange(p) % max(p // 2, 1)
    _, errors = compare(q, k, scale=2.0, instance_ids=ids, self_mask=True, row_offset=offset)
    assert_close(errors)
    targets = torch.randint(0, p, (m,), generator=gen)
    _, errors = compare(q, k, scale=2.0, targets=targets, self_mask=True, row_offset=offset, bias=True)
    assert_close(errors)


def test_fp16_targets_mode_with_bias():
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(100, 130, generator=gen), torch.randn(257, 130, generator=gen)
    targets = torch.randint(0, 257, (100,), generator=gen)
    _, errors = compare(q, k, dtype=torch.float16, scale=0.05, targets=targets, bias=True)
    assert_close(errors, torch.float16)


def test_non_contiguous_inputs():
    """Transposed and strided views reach the kernel as they are: strides, not copies, index them."""
    gen = torch.Generator().manual_seed(6)
    q_store, k_store = torch.randn(65, 100, generator=gen), torch.randn(257, 130, generator=gen)
    targets = torch.randint(0, 257, (100,), generator=gen)
    grads = []
    for dtype in (torch.float32, torch.float64):
        q_leaf, k_leaf = (t.detach().to(dtype).requires_grad_() for t in (q_store, k_store))
        q, k = q_leaf.T, k_leaf[:, ::2]                      # (100, 65) column-major, (257, 65) strided
        assert not q.is_contiguous() and not k.is_contiguous()
        run = sim_xent if dtype == torch.float32 else sim_xent_reference
        kwargs = {"impl": "triton"} if dtype == torch.float32 else {}
        loss = run(q, k, scale=1.0, targets=targets, **kwargs)
        loss.backward()
        grads.append((loss.detach(), q_leaf.grad, k_leaf.grad))
    (loss, dq, dk), (ref, dq_ref, dk_ref) = grads
    assert rel_err(loss, ref) < 2e-6 and rel_err(dq, dq_ref) < 2e-5 and rel_err(dk, dk_ref) < 2e-5


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_and_per_row_gradients(reduction):
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(100, 64, generator=gen), torch.randn(257, 64, generator=gen)
    loss, errors = compare(q, k, scale=1.0, instance_ids=torch.arange(257) % 50, reduction=reduction,
                           row_offset=20, self_mask=True)
    assert_close(errors)
    assert loss.shape == ((100,) if reduction == "none" else ())


def test_feature_dimension_2048_in_chunks():
    gen = torch.Generator().manual_seed(8)
    q, k = torch.randn(20, 2048, generator=gen), torch.randn(30, 2048, generator=gen)
    _, errors = compare(q, k, scale=0.02, targets=torch.randint(0, 30, (20,), generator=gen), bias=True)
    assert_close(errors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_very_large_logits_stay_finite(dtype):
    """Logits near 1e4 (fp16-representable rows, scale 1): exp would overflow without the running max."""
    gen = torch.Generator().manual_seed(9)
    z = torch.nn.functional.normalize(torch.randn(2 * 50, 128, generator=gen), dim=1) * 100.0
    loss, errors = compare(z, None, dtype=dtype, same=True, scale=1.0, instance_ids=torch.arange(50).repeat(2),
                           self_mask=True)
    assert torch.isfinite(loss) and float(loss.detach()) > 100.0
    assert_close(errors, dtype)


def test_bf16_runs_as_fp32_in_the_interpreter_and_returns_bf16_grads():
    """The interpreter's bf16 tl.dot is wrong; the dispatch upcasts there (bf16 is checked on GPUs)."""
    gen = torch.Generator().manual_seed(10)
    z = torch.nn.functional.normalize(torch.randn(40, 32, generator=gen), dim=1).bfloat16().requires_grad_()
    ids = torch.arange(20).repeat(2)
    loss = sim_xent(z, z, scale=5.0, instance_ids=ids, self_mask=True, impl="triton")
    loss.backward()
    z64 = z.detach().double().requires_grad_()
    ref = sim_xent_reference(z64, z64, scale=5.0, instance_ids=ids, self_mask=True)
    ref.backward()
    assert z.grad.dtype == torch.bfloat16
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert rel_err(z.grad, z64.grad) < 1e-2


def test_nt_xent_triton_equals_reference_path():
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(3 * 17, 24, generator=gen, requires_grad=True)
    a = nt_xent(z, 3, 0.2, impl="triton")
    (ga,) = torch.autograd.grad(a, z)
    b = nt_xent(z, 3, 0.2, impl="reference")
    (gb,) = torch.autograd.grad(b, z)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    assert rel_err(ga, gb.double()) < 1e-5


def test_auto_dispatch_takes_the_kernel_under_the_interpreter_and_float64_takes_the_reference():
    z = torch.randn(8, 4)
    ids = torch.arange(4).repeat(2)
    assert runtime.use_triton("sim_xent", z, "auto")
    with pytest.raises(ValueError, match="float64 runs on the reference"):
        sim_xent(z.double(), z.double(), scale=1.0, instance_ids=ids, impl="triton")
    assert not runtime.use_triton("sim_xent", z, "reference")


def test_triton_without_cuda_or_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRET", False)
    with pytest.raises(ValueError, match="impl='triton' needs triton and a CUDA tensor"):
        runtime.use_triton("sim_xent", torch.zeros(2, 2), "triton")
    assert not runtime.use_triton("sim_xent", torch.zeros(2, 2), "auto")


# A row without a positive is a 0/0 inside the kernel (NaN on a GPU, an error here): numpy warns.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("kwargs,message", [
    (dict(instance_ids=torch.arange(6)), "a row has no positive column"),
    (dict(targets=torch.tensor([0, 1, 2, 3, 4, 6])), r"targets must lie in \[0, 6\)"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), "must be integer, shape"),
    (dict(targets=torch.zeros(6, dtype=torch.long), instance_ids=torch.arange(6)), "exactly one of"),
    (dict(instance_ids=torch.arange(6) % 3, row_offset=1), "row_offset=1"),
    (dict(targets=torch.zeros(6, dtype=torch.long), col_bias=torch.zeros(5)), "one value per column"),
    (dict(targets=torch.zeros(6, dtype=torch.long), reduction="max"), "reduction='max'"),
    (dict(targets=torch.zeros(6, dtype=torch.long), impl="fast"), "impl='fast'"),
    (dict(targets=torch.zeros(6, dtype=torch.long), scale=float("nan")), "scale=nan: must be a finite"),
])
def test_bad_arguments_name_the_rule(kwargs, message):
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match=message):
        sim_xent(z, z, **{"scale": 1.0, **kwargs})


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"must be \(M, D\) and \(P, D\)"):
        sim_xent(torch.randn(3, 4), torch.randn(5, 3), scale=1.0, targets=torch.zeros(3, dtype=torch.long))
