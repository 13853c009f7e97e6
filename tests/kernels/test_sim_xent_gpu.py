"""sim_xent on a CUDA GPU: bf16/fp16/fp32 against float64, large 2N, and the O((M + P) D) memory claim.

The input helpers are tested on the CPU too (the unmarked test below): a GPU session must not be the
first to find their bugs."""
import pytest
import torch
from torch.utils.checkpoint import checkpoint

from fastssl.kernels.reference import sim_xent_reference
from fastssl.kernels.sim_xent import sim_xent

gpu = pytest.mark.gpu

# Relative error of loss / gradient norms against float64 on the same operands (GPU.md: bf16 1e-3..1e-2).
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-4, 5e-3), torch.bfloat16: (1e-4, 2e-2)}


def rel_err(actual, expected):
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def simclr_problem(two_n: int, d: int, dtype, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(two_n, d, device="cuda", generator=gen), dim=1)
    ids = torch.arange(two_n // 2, device="cuda").repeat(2)
    return z.to(dtype), ids


def valid_targets(m: int, p: int, row_offset: int, generator) -> torch.Tensor:
    """One target column per row, never the row's own self-masked column (row + row_offset): such a
    target makes both losses +inf and their error NaN. Drawn from the p - 1 other columns."""
    drawn = torch.randint(0, p - 1, (m,), device=generator.device, generator=generator)
    own = torch.arange(m, device=drawn.device) + row_offset
    return drawn + (drawn >= own).long()


def test_valid_targets_avoid_the_masked_column_and_reach_every_other():
    m, p, offset = 30, 50, 20
    seen = torch.zeros(m, p, dtype=torch.bool)
    for seed in range(1000):          # each column missed with p = (48/49)^1000 ~ 1e-9
        targets = valid_targets(m, p, offset, torch.Generator().manual_seed(seed))
        seen[torch.arange(m), targets] = True
    own = torch.arange(m) + offset
    assert not bool(seen[torch.arange(m), own].any())
    expected = torch.ones(m, p, dtype=torch.bool)
    expected[torch.arange(m), own] = False
    assert torch.equal(seen, expected)


def chunked_reference(z, ids, scale, chunk=2048):
    """The fp32 reference, rows in chunks (row_offset) under checkpointing: exact and never M x P at once."""
    m = z.shape[0]
    total = 0.0
    for start in range(0, m, chunk):
        rows = z[start:start + chunk]
        total = total + checkpoint(lambda r, k, s=start: sim_xent_reference(
            r, k, scale=scale, instance_ids=ids, self_mask=True, row_offset=s, reduction="sum"),
            rows, z, use_reentrant=False)
    return total / m


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("two_n,d", [(1000, 128), (4096, 256), (8192, 128), (300, 2048)])
def test_matches_float64_reference(dtype, two_n, d):
    z, ids = simclr_problem(two_n, d, dtype)
    q = z.clone().requires_grad_()
    loss = sim_xent(q, q, scale=2.0, instance_ids=ids, self_mask=True, impl="triton")
    loss.backward()
    z64 = z.double().requires_grad_()
    ref = sim_xent_reference(z64, z64, scale=2.0, instance_ids=ids, self_mask=True)
    ref.backward()
    loss_tol, grad_tol = TOL[dtype]
    assert torch.isfinite(loss) and rel_err(loss.detach(), ref.detach()) < loss_tol
    assert torch.isfinite(q.grad).all() and rel_err(q.grad, z64.grad) < grad_tol


@gpu
def test_targets_mode_with_bias_and_offset_bf16():
    gen = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(3000, 128, device="cuda", generator=gen).bfloat16().requires_grad_()
    k = torch.randn(5000, 128, device="cuda", generator=gen).bfloat16().requires_grad_()
    bias = torch.randn(5000, device="cuda", generator=gen).requires_grad_()
    targets = valid_targets(3000, 5000, row_offset=1000, generator=gen)
    loss = sim_xent(q, k, scale=0.1, col_bias=bias, targets=targets, self_mask=True, row_offset=1000, impl="triton")
    loss.backward()
    q64, k64, b64 = (t.detach().double().requires_grad_() for t in (q, k, bias))
    ref = sim_xent_reference(q64, k64, scale=0.1, col_bias=b64, targets=targets, self_mask=True, row_offset=1000)
    ref.backward()
    assert rel_err(loss.detach(), ref.detach()) < 1e-4
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (bias.grad, b64.grad)):
        assert rel_err(got, want) < 2e-2


@gpu
def test_two_n_65536_matches_chunked_fp32_reference():
    z, ids = simclr_problem(65536, 128, torch.bfloat16, seed=2)
    q = z.clone().requires_grad_()
    loss = sim_xent(q, q, scale=2.0, instance_ids=ids, self_mask=True, impl="triton")
    loss.backward()
    z32 = z.float().requires_grad_()
    ref = chunked_reference(z32, ids, 2.0)
    ref.backward()
    assert rel_err(loss.detach(), ref.detach()) < 1e-4
    assert rel_err(q.grad, z32.grad) < 2e-2


@gpu
def test_two_n_131072_extra_memory_is_linear_in_rows():
    """Eager would need 2 x 131072^2 x 4 bytes = 137 GB for logits and their gradient; the kernel needs O(M D)."""
    z, ids = simclr_problem(131072, 128, torch.bfloat16, seed=3)
    q = z.clone().requires_grad_()
    # Warm-up at the same (M, P, D) first: autotuning benchmarks with a 256 MiB scratch buffer of its
    # own, which is not the kernel's memory and must stay out of the measured window.
    sim_xent(q, q, scale=2.0, instance_ids=ids, self_mask=True, impl="triton").backward()
    q.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = sim_xent(q, q, scale=2.0, instance_ids=ids, self_mask=True, impl="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    row_bytes = q.numel() * q.element_size()          # one (M x D) bf16 tensor: 32 MiB
    # dq, dk and their sum (3 row tensors) + lse, n_pos, loss (3 x M fp32) + the allocator's rounding.
    assert extra < 4 * row_bytes + 3 * 4 * q.shape[0] + (8 << 20), extra
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
