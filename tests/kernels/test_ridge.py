"""The fused ridge kernel (Triton interpreter on CPU) against float64 torch.linalg.solve: W and grads.

Systems of size min(n, D) <= 64 run the on-chip kernel; larger ones the torch Cholesky path inside the
same autograd.Function (factor saved, adjoint solve in backward). Both are covered here.
"""
import pytest
import torch

from fastssl.kernels import ridge_solve, runtime
from fastssl.kernels.reference import ridge_reference

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="TRITON_INTERPRET=1 was not set before import")


def rel_err(actual, expected) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-300))


def problem(t, n, d, c, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, d, generator=gen).to(dtype)
    y = torch.nn.functional.one_hot(torch.randint(0, c, (t, n), generator=gen), c).to(dtype)
    return x, y, torch.rand(t, generator=gen) + 0.5


def compare(x, y, lam, form="auto"):
    """Kernel and float64 reference on the same values; relative errors of W and every gradient."""
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    ls = lam.clone().requires_grad_() if isinstance(lam, torch.Tensor) else lam
    w = ridge_solve(xs, ys, ls, form=form, impl="triton")
    weights = torch.linspace(-1, 1, w.numel()).reshape(w.shape)
    (w * weights).sum().backward()
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    l64 = lam.double().requires_grad_() if isinstance(lam, torch.Tensor) else lam
    ref = torch.linalg.solve(*normal_equations(x64, y64, l64))  # the primal system, solved directly
    (ref * weights.double()).sum().backward()
    errors = {"w": rel_err(w.detach(), ref.detach()), "x": rel_err(xs.grad, x64.grad), "y": rel_err(ys.grad, y64.grad)}
    if isinstance(lam, torch.Tensor):
        errors["lam"] = rel_err(ls.grad, l64.grad)
        assert ls.grad.shape == lam.shape
    assert w.dtype == torch.float32 and xs.grad.dtype == x.dtype and w.shape == (x.shape[0], x.shape[2], y.shape[2])
    return w, errors


def normal_equations(x, y, lam):
    """(x^T x + lam I, x^T y): W solves the first against the second, whichever form computed it."""
    lam = torch.as_tensor(lam, dtype=x.dtype).reshape(-1, 1, 1)
    return x.mT @ x + lam * torch.eye(x.shape[2], dtype=x.dtype), x.mT @ y


# (T, n, D, C): every n in {1, 5, 25, 80, 128}, D in {16, 64, 130}, T in {1, 3, 64}, C in {5, 64},
# dual and primal, on chip (min(n, D) <= 64) and the torch path (80, 128), one or two column blocks.
CASES = [(1, 1, 16, 5), (3, 5, 64, 64), (64, 5, 16, 5), (3, 25, 16, 64), (1, 25, 130, 5), (3, 80, 64, 5),
         (1, 80, 130, 64), (3, 128, 130, 5), (3, 128, 16, 5), (1, 128, 64, 64)]


@pytest.mark.parametrize("t,n,d,c", CASES)
def test_weights_and_grads_match_float64_solve(t, n, d, c):
    x, y, lam = problem(t, n, d, c, seed=n * d + t)
    _, errors = compare(x, y, lam if t > 1 else float(lam[0]))
    assert all(err < 3e-5 for err in errors.values()), errors


@pytest.mark.parametrize("t,n,d", [(3, 40, 48), (2, 25, 130), (3, 60, 16)])
def test_primal_and_dual_agree(t, n, d):
    x, y, lam = problem(t, n, d, 5, seed=n)
    primal = ridge_solve(x, y, lam, form="primal", impl="triton")
    dual = ridge_solve(x, y, lam, form="dual", impl="triton")
    assert rel_err(primal, dual) < 3e-5  # each is within 3e-5 of float64 (n = 25, D = 130: two paths)


@pytest.mark.parametrize("t,n,d,c", [(3, 25, 64, 5), (3, 80, 64, 64), (2, 128, 80, 5)])
def test_normal_equations_residual_fp32(t, n, d, c):
    x, y, lam = problem(t, n, d, c, seed=d)
    w = ridge_solve(x, y, lam, impl="triton")
    system, rhs = normal_equations(x, y, lam)
    assert rel_err(system @ w, rhs) < 1e-5


def nearly_collinear(t, n, d, noise, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, 1, d, generator=gen) + noise * torch.randn(t, n, d, generator=gen)
    return x, torch.nn.functional.one_hot(torch.arange(n) % 5, 5).float().expand(t, n, 5)


@pytest.mark.parametrize("t,n,d", [(3, 25, 64), (2, 64, 64), (2, 40, 48), (2, 100, 130)])
def test_ill_conditioned_stays_finite_and_as_good_as_fp32_lapack(t, n, d):
    """lam = 1e-4, support within 1e-2 of one line: cond(A) ~ 1e5..1e6, so fp32 cannot beat ~1e-2 on W.

    Stated tolerance: W within 0.2 of float64 and no worse than 1.5x fp32 LAPACK (torch.linalg.solve)
    on the same inputs; the ridge objective's excess over its float64 minimum no worse than 1.5x LAPACK's.
    """
    x, y = nearly_collinear(t, n, d, 1e-2, seed=n)
    w = ridge_solve(x, y, 1e-4, impl="triton")
    exact = ridge_reference(x.double(), y.double(), 1e-4)
    lapack32 = ridge_reference(x, y, 1e-4)
    assert torch.isfinite(w).all()
    assert rel_err(w, exact) < min(0.2, 1.5 * rel_err(lapack32, exact) + 1e-3)

    def objective(v):
        x64, v = x.double(), v.double()
        return ((x64 @ v - y.double()).square().sum() + 1e-4 * v.square().sum()).item()
    best = objective(exact)
    assert objective(w) - best <= 1.5 * (objective(lapack32) - best) + 1e-6 * best


def test_singular_in_fp32_stays_finite_on_chip():
    """Within 1e-3 of one line, cond ~ 5e7 is beyond fp32: W is meaningless but finite (pivots >= lam)."""
    x, y = nearly_collinear(2, 64, 64, 1e-3, seed=64)
    assert torch.isfinite(ridge_solve(x, y, 1e-4, impl="triton")).all()


def test_rank_deficient_large_system_is_refused_not_garbage():
    """Beyond the on-chip size cuSOLVER's Cholesky cannot floor pivots: rank 20 of 100 rows at lam = 1e-4
    fails in fp32, and the partial factor would give a finite W 3000x off. Off the GPU: an error naming
    the rule (on the GPU the task's W is NaN; tests/kernels/test_ridge_gpu.py)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 100, 20, generator=gen) @ torch.randn(2, 20, 130, generator=gen)
    y = torch.nn.functional.one_hot(torch.arange(100) % 5, 5).float().expand(2, 100, 5)
    with pytest.raises(ValueError, match=r"not positive definite in fp32 for task\(s\) \[0, 1\]: lam is below"):
        ridge_solve(x, y, 1e-4, impl="triton")
    assert rel_err(ridge_solve(x, y, 1.0, impl="triton"), ridge_reference(x.double(), y.double(), 1.0)) < 3e-3


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_reference_gradcheck_float64(form):
    x, y, lam = problem(2, 6, 4, 3, seed=1, dtype=torch.float64)
    args = (x.requires_grad_(), y.requires_grad_(), lam.double().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, c: ridge_reference(a, b, c, form=form), args)


@pytest.mark.parametrize("t,n,d,c", [(3, 25, 64, 5), (3, 80, 64, 64), (2, 128, 130, 5)])
def test_fp16_inputs_accumulate_in_fp32(t, n, d, c):
    x, y, _ = problem(t, n, d, c, seed=c, dtype=torch.float16)
    _, errors = compare(x, y, 0.5)
    assert errors["w"] < 3e-5 and errors["x"] < 1e-3 and errors["y"] < 1e-3, errors  # grads rounded to fp16


def test_bf16_runs_as_fp32_in_the_interpreter_and_returns_bf16_grads():
    x, y, lam = problem(3, 25, 64, 5, seed=2, dtype=torch.bfloat16)
    _, errors = compare(x, y, lam)
    assert errors["w"] < 3e-5 and errors["x"] < 1e-2 and errors["lam"] < 3e-5, errors


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_labels_without_grad_skip_dy_and_keep_the_other_grads(form):
    """One-hot labels (R2D2's y) need no gradient: the kernel leaves dy out, dx and dlam are unchanged."""
    x, y, lam = problem(3, 25, 40, 5, seed=9)
    grads = {}
    for y_grad in (False, True):
        xs, ls, ys = x.clone().requires_grad_(), lam.clone().requires_grad_(), y.clone().requires_grad_(y_grad)
        w = ridge_solve(xs, ys, ls, form=form, impl="triton")
        (w * torch.linspace(-1, 1, w.numel()).reshape(w.shape)).sum().backward()
        assert (ys.grad is not None) == y_grad
        grads[y_grad] = (xs.grad, ls.grad)
    assert torch.equal(grads[False][0], grads[True][0]) and torch.equal(grads[False][1], grads[True][1])


def test_non_contiguous_inputs_and_a_0d_lam_tensor():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 20, generator=gen).mT        # (3, 20, 40) with strides (800, 1, 20)
    y = torch.randn(3, 20, 14, generator=gen)[:, :, ::2]  # (3, 20, 7), column stride 2
    _, errors = compare(x, y, torch.tensor(0.3))
    assert all(err < 3e-5 for err in errors.values()), errors


def test_auto_dispatch_and_float64_takes_the_reference():
    x, y, lam = problem(2, 5, 16, 5, seed=4)
    assert runtime.use_triton("ridge", x, "auto")
    w = ridge_solve(x.double(), y, lam)
    assert w.dtype == torch.float64 and rel_err(w, ridge_reference(x.double(), y.double(), lam.double())) < 1e-12
    with pytest.raises(ValueError, match="float64 runs on the reference"):
        ridge_solve(x.double(), y, lam, impl="triton")
    assert rel_err(ridge_solve(x, y, lam, impl="reference"), ridge_solve(x, y, lam)) < 1e-5


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.randn(5, 4), torch.randn(5, 3), 1.0), {}, r"must be \(T, n, D\) and \(T, n, C\)"),
    ((torch.randn(2, 5, 4), torch.randn(2, 6, 3), 1.0), {}, r"must be \(T, n, D\) and \(T, n, C\)"),
    ((torch.randn(2, 0, 4), torch.randn(2, 0, 3), 1.0), {}, "every dimension must be >= 1"),
    ((torch.randn(2, 5, 4), torch.ones(2, 5, 3, dtype=torch.long), 1.0), {}, "must be floating point"),
    ((torch.randn(2, 5, 4), torch.randn(2, 5, 3), 0.0), {}, r"lam=0.0: must be > 0"),
    ((torch.randn(2, 5, 4), torch.randn(2, 5, 3), torch.tensor([1.0, -1.0])), {}, "lam must be > 0"),
    ((torch.randn(2, 5, 4), torch.randn(2, 5, 3), torch.ones(3)), {}, r"one value per task \(2,\)"),
    ((torch.randn(2, 5, 4), torch.randn(2, 5, 3), 1.0), {"form": "qr"}, "form='qr'"),
    ((torch.randn(2, 5, 4), torch.randn(2, 5, 3), 1.0), {"impl": "fast"}, "impl='fast'"),
])
def test_bad_arguments_name_the_rule(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ridge_solve(*args, **kwargs)
