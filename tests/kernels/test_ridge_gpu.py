"""ridge_solve on a CUDA GPU: bf16/fp16/fp32 against float64, the large-system (cuSOLVER) path, no host sync."""
import pytest
import torch

from fastssl.kernels import ridge_solve
from fastssl.kernels.reference import ridge_reference

pytestmark = pytest.mark.gpu

TOL = {torch.float32: (3e-5, 3e-5), torch.float16: (3e-5, 1e-3), torch.bfloat16: (3e-5, 1e-2)}  # (W, grads)


def rel_err(actual, expected):
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def check(t, n, d, c, dtype):
    gen = torch.Generator(device="cuda").manual_seed(n * d)
    x = torch.randn(t, n, d, device="cuda", generator=gen).to(dtype).requires_grad_()
    y = torch.nn.functional.one_hot(torch.randint(0, c, (t, n), device="cuda", generator=gen), c).float()
    lam = (torch.rand(t, device="cuda", generator=gen) + 0.5).requires_grad_()
    w = ridge_solve(x, y, lam, impl="triton")
    grad = torch.randn_like(w)
    dx, dlam = torch.autograd.grad(w, (x, lam), grad)
    x64, l64 = x.detach().double().requires_grad_(), lam.detach().double().requires_grad_()
    ref = ridge_reference(x64, y.double(), l64)
    dx64, dl64 = torch.autograd.grad(ref, (x64, l64), grad.double())
    w_tol, g_tol = TOL[dtype]
    assert torch.isfinite(w).all() and rel_err(w.detach(), ref) < w_tol
    assert rel_err(dx, dx64) < g_tol and rel_err(dlam, dl64) < w_tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("t,n,d,c", [(512, 25, 128, 64), (256, 256, 64, 256), (64, 5, 640, 5)])
def test_on_chip_matches_float64(dtype, t, n, d, c):
    check(t, n, d, c, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t,n,d,c", [(128, 512, 128, 512), (16, 200, 1024, 10)])
def test_large_systems_take_the_cusolver_path(dtype, t, n, d, c):
    check(t, n, d, c, dtype)


def test_a_failed_large_factorisation_is_nan_not_garbage():
    """Rank 20 of 100 rows at lam = 1e-4 is not positive definite in fp32: that task's W is NaN, the other's exact."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 100, 20, device="cuda", generator=gen) @ torch.randn(2, 20, 130, device="cuda", generator=gen)
    x[1] = torch.randn(100, 130, device="cuda", generator=gen)
    y = torch.nn.functional.one_hot(torch.arange(100, device="cuda") % 5, 5).float().expand(2, 100, 5)
    w = ridge_solve(x, y, 1e-4, impl="triton")
    assert torch.isnan(w[0]).all()
    assert rel_err(w[1], ridge_reference(x[1:].double(), y[1:].double(), 1e-4)[0]) < 1e-3


@pytest.mark.parametrize("n,d", [(25, 128), (512, 128)])
def test_forward_and_backward_never_synchronise_the_host(n, d):
    x = torch.randn(64, n, d, device="cuda", requires_grad=True)
    y = torch.randn(64, n, 10, device="cuda")
    lam = torch.full((64,), 0.5, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = ridge_solve(x, y, lam, impl="triton")
        torch.autograd.grad(w.sum(), (x, lam))
    finally:
        torch.cuda.set_sync_debug_mode("default")
